"""The sign-in pages with single sign-on beside (or instead of) the password form.

- `SignInView`: Django's LoginView, showing "Sign in with <label>" when SSO is set up; with
  CHAT_PASSWORD_LOGIN off it has no password form and refuses a posted one.
- `start` and `callback`: mozilla-django-oidc's views with the provider found lazily
  (chat/oidc.py) and every failure a page that says what happened, instead of a redirect
  to the start or a server error: the provider unreachable (502), the provider's answer
  refused (403), a stale or foreign sign-in link (400).
- `SignOutView`: Django's LogoutView (the session ends and chat/signout.py closes its chat
  sockets), then, for a session that came through SSO, the provider's own sign-out when
  its discovery document names an `end_session_endpoint`.
- `admin_login`: the admin's sign-in goes to the site's sign-in page when SSO is set up.
"""

import logging
from functools import wraps
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import LoginView, LogoutView, redirect_to_login
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from chat import oidc

log = logging.getLogger(__name__)


def failure(request: HttpRequest, heading: str, detail: str, status: int) -> HttpResponse:
    context = {"heading": heading, "detail": detail, "label": settings.CHAT_OIDC_LABEL}
    return render(request, "registration/sso_failed.html", context, status=status)


def unreachable(request: HttpRequest, exc: Exception) -> HttpResponse:
    return failure(
        request,
        f"{settings.CHAT_OIDC_LABEL} cannot be reached",
        f"Signing in needs the sign-in provider, and {exc}. Try again in a moment, or tell your admin.",
        502,
    )


def password_accounts(view):
    """Refuse a page of local password accounts (invites, sign-up, password reset) when
    CHAT_PASSWORD_LOGIN is off: an account made there could not sign in."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not settings.CHAT_PASSWORD_LOGIN:
            return failure(
                request,
                "Accounts come from single sign-on",
                f"This site has no password accounts: sign in with {settings.CHAT_OIDC_LABEL}.",
                404,
            )
        return view(request, *args, **kwargs)

    return wrapped


class SignInView(LoginView):
    """The template asks chat_accounts' tags whether to show the SSO button and the form."""

    def post(self, request, *args, **kwargs):
        if not settings.CHAT_PASSWORD_LOGIN:
            return failure(
                request,
                "Password sign-in is off",
                f"This site signs people in with {settings.CHAT_OIDC_LABEL} only.",
                403,
            )
        return super().post(request, *args, **kwargs)


class StartView(OIDCAuthenticationRequestView):
    """Off to the provider's sign-in page, with state, nonce and PKCE kept in the session."""

    get_settings = staticmethod(oidc.library_setting)

    def __init__(self, **kwargs) -> None:
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)  # View's: no settings read yet

    def get_extra_params(self, request):
        return {}

    def get(self, request):
        if not oidc.enabled():
            return failure(request, "Single sign-on is not set up", "Sign in with your password.", 404)
        try:
            self.OIDC_OP_AUTH_ENDPOINT = oidc.provider().authorization_endpoint
        except oidc.ProviderUnavailable as exc:
            return unreachable(request, exc)
        self.OIDC_RP_CLIENT_ID = settings.CHAT_OIDC_CLIENT_ID
        return super().get(request)


class CallbackView(OIDCAuthenticationCallbackView):
    """Where the provider sends the browser back with a code (or an error)."""

    get_settings = staticmethod(oidc.library_setting)

    def get(self, request):
        if not oidc.enabled():
            return failure(request, "Single sign-on is not set up", "Sign in with your password.", 404)
        try:
            return super().get(request)
        except oidc.ProviderUnavailable as exc:
            return unreachable(request, exc)
        except oidc.SignInRefused as exc:
            return failure(request, "Sign-in refused", str(exc), 403)
        except SuspiciousOperation:
            # The library's "state not found": a link used twice, or begun in another browser.
            return failure(
                request,
                "This sign-in has expired",
                "The sign-in was already used or was started in another browser. Start again.",
                400,
            )
        except requests.RequestException as exc:
            log.warning("The sign-in provider did not answer: %s", type(exc).__name__)
            return unreachable(request, f"it did not answer ({type(exc).__name__})")

    def login_failure(self):
        error = self.request.GET.get("error")
        if error:
            detail = f"{settings.CHAT_OIDC_LABEL} did not sign you in ({error[:100]})."
        else:
            detail = "The sign-in did not complete."
        return failure(self.request, "Sign-in did not complete", detail + " Start again.", 403)


class SignOutView(LogoutView):
    def post(self, request, *args, **kwargs):
        id_token = request.session.get("oidc_id_token")
        response = super().post(request, *args, **kwargs)  # the session ends here
        if not (id_token and oidc.enabled()):
            return response
        try:
            end_session = oidc.provider().end_session_endpoint
        except oidc.ProviderUnavailable:
            return response  # signed out here; the provider's session lasts until it ends itself
        if not end_session:
            return response
        query = urlencode(
            {
                "id_token_hint": id_token,
                "client_id": settings.CHAT_OIDC_CLIENT_ID,
                "post_logout_redirect_uri": request.build_absolute_uri(reverse("login")),
            }
        )
        separator = "&" if "?" in end_session else "?"
        return HttpResponseRedirect(f"{end_session}{separator}{query}")


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's sign-in: the site's page when SSO is set up (the admin's has no SSO button)."""
    if request.user.is_authenticated and not request.user.is_staff:
        return failure(
            request,
            "Staff only",
            f"You are signed in as {request.user.get_username()}, who is not staff.",
            403,
        )
    if request.user.is_authenticated:
        return HttpResponseRedirect(reverse("admin:index"))
    if oidc.enabled() or not settings.CHAT_PASSWORD_LOGIN:
        return redirect_to_login(request.GET.get("next") or reverse("admin:index"))
    return admin.site.login(request)

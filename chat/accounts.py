"""Joining the site: by invite (the default) or, when CHAT_OPEN_SIGNUP is on, by open sign-up.

Signing in and out and changing a password are Django's own auth views
(django.contrib.auth.urls); these views only create accounts.
"""

import hashlib

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from chat.forms import SignUpForm
from chat.models import Invite
from chat.oidc_views import password_accounts
from chat.throttle import over_limit, refusal

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
FIRST_ADMIN = "admin"


def initial_password_path():
    """Where `manage.py bootstrap` keeps the first admin's password (readable by the owner only)."""
    return settings.DATA_DIR / "initial-admin-password"


def initial_password_unused() -> bool:
    """Whether the sign-in page may say that an `admin` account exists and where its first
    password is (issue #14): only until that account has signed in once and only while it
    still has the password in the file. A visitor otherwise learns an account name for free.

    check_password also catches a password changed with `manage.py changepassword`. It costs
    a password hash (about a second of CPU), so its answer is cached for that stored hash and
    that file: the sign-in page is not a way to make the server hash on every visit.
    """
    admin = (
        get_user_model()
        .objects.filter(username=FIRST_ADMIN, last_login__isnull=True)
        .only("password")
        .first()
    )
    if admin is None:
        return False
    path = initial_password_path()
    try:
        kept = path.read_text().strip()
        written = path.stat().st_mtime_ns
    except OSError:
        return False
    if not kept:
        return False
    key = "chat:first-password-unused:" + hashlib.sha256(f"{admin.password}|{written}".encode()).hexdigest()
    unused = cache.get(key)
    if unused is None:
        unused = admin.check_password(kept)
        cache.set(key, unused, timeout=None)
    return unused


class InviteTaken(Exception):
    """Someone else used the invite between the page loading and the form arriving."""


def _sign_in(request: HttpRequest, user) -> None:
    # Name the backend: a host site may list several (SSO first), and the new
    # account has a password for the model backend only.
    backends = settings.AUTHENTICATION_BACKENDS
    login(request, user, backend=MODEL_BACKEND if MODEL_BACKEND in backends else backends[0])


@password_accounts
def invite(request: HttpRequest, token: str) -> HttpResponse:
    invitation = get_object_or_404(Invite, token=token)
    if invitation.status != "open":
        return render(request, "registration/invite_closed.html", {"invite": invitation}, status=410)
    if request.user.is_authenticated:
        return render(request, "registration/invite_signed_in.html", {"invite": invitation})
    rate = settings.CHAT_SIGNUP_RATE
    if request.method == "POST" and over_limit(request, "invite", rate, [lambda group, request: token]):
        return refusal(request, "Sign-ups with one invite", rate)
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                user = form.save(commit=False)
                user.email = invitation.email
                user.save()
                # Conditional update: of two people racing with one link, one wins.
                claimed = (
                    Invite.objects.usable()
                    .filter(pk=invitation.pk)
                    .update(used_by=user, used_at=timezone.now())
                )
                if not claimed:
                    raise InviteTaken
        except InviteTaken:
            invitation.refresh_from_db()
            return render(request, "registration/invite_closed.html", {"invite": invitation}, status=410)
        _sign_in(request, user)
        return redirect("chat:home")
    return render(request, "registration/signup.html", {"form": form, "invite": invitation})


@password_accounts
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.CHAT_OPEN_SIGNUP:
        # 404 as before (nothing to sign up at), but a page that says why and where to go.
        return render(request, "registration/signup_closed.html", status=404)
    if request.user.is_authenticated:
        return redirect("chat:home")
    rate = settings.CHAT_SIGNUP_RATE
    if request.method == "POST" and over_limit(request, "signup", rate, ["ip"]):
        return refusal(request, "Sign-ups", rate)
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        _sign_in(request, user)
        return redirect("chat:home")
    return render(request, "registration/signup.html", {"form": form, "invite": None})

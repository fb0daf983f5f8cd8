"""Response headers every page gets: a Content-Security-Policy on HTML, and no caching of
anything shown to someone signed in (issue #12).

A middleware of our own rather than django-csp: the policy is one fixed string except
for the page's own websocket origin, which depends on the request's Host (Safari before
16 does not let 'self' cover ws: and wss:, so it is named outright). Static files never
get here: WhiteNoise, earlier in MIDDLEWARE, answers them with their own long caching.
"""

from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse

# No inline script anywhere (the page's config is a JSON data block, which is not run).
# Style *attributes* are allowed: markdown tables align cells with style="text-align:…"
# (chat.rendering lets no other property through), and the admin uses a few; style
# elements and sheets must come from the site.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'; connect-src 'self'"
)
NO_STORE = "no-store, private"


def policy() -> str:
    """POLICY, with single sign-on's provider among the form targets: signing out posts a
    form that the site answers with a redirect to the provider's own sign-out (chat.oidc_views),
    and browsers hold redirects after a form to form-action too."""
    issuer = getattr(settings, "CHAT_OIDC_ISSUER", "")
    if not issuer:
        return POLICY
    parsed = urlsplit(issuer)
    return POLICY.replace("form-action 'self'", f"form-action 'self' {parsed.scheme}://{parsed.netloc}")


def content_security_policy(request: HttpRequest) -> str:
    try:
        host = request.get_host()
    except DisallowedHost:
        return policy()
    return f"{policy()} {'wss' if request.is_secure() else 'ws'}://{host}"


def add_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if response.get("Content-Type", "").startswith("text/html") and "Content-Security-Policy" not in response:
        response["Content-Security-Policy"] = content_security_policy(request)
    # Conversations, exports and their JSON must not stay in a shared or browser cache
    # after the user signs out. Every response to a request with a session may be someone's
    # own (a signed-in user always has one); telling that from the cookie costs no query,
    # where request.user would load the session in an async stack. A view that chose its
    # own caching keeps it.
    if settings.SESSION_COOKIE_NAME in request.COOKIES and "Cache-Control" not in response:
        response["Cache-Control"] = NO_STORE
    return response


class SecurityHeaders:
    """Middleware: add_headers on every response that reaches it (sync or async stack)."""

    sync_capable = async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        return add_headers(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return add_headers(request, await self.get_response(request))

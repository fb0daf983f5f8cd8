"""Websocket handshakes from the site's own pages only: the rule Django's CSRF check applies
to a form's Origin, applied to the chat socket.

channels' AllowedHostsOriginValidator compares the Origin's host with ALLOWED_HOSTS and
nothing else, so a page on another port of the same host (`http://127.0.0.1:9999`) or
the other scheme was let in, with the user's session cookie (issue #12). Here the Origin
must be the page's own origin, scheme, host and port, as the handshake shows it (the Host
header; ws → http, wss → https, or X-Forwarded-Proto behind DJANGO_BEHIND_HTTPS_PROXY), or
one of CSRF_TRUSTED_ORIGINS. The Host itself must be in ALLOWED_HOSTS.

A handshake without an Origin is refused too. Browsers always send one, so only other
clients omit it, and those can send one; refusing keeps the old behaviour and every odd
client (a sandboxed frame sends `null`) out.
"""

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def _allowed_hosts() -> list[str]:
    """ALLOWED_HOSTS as Django's HttpRequest.get_host reads it."""
    hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not hosts:
        return [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def _is_secure(scope) -> bool:
    if scope.get("scheme") == "wss":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if not proxy:
        return False
    header, secure_value = proxy
    # Django names the header as in META (HTTP_X_FORWARDED_PROTO); ASGI as sent.
    name = header.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
    value = _header(scope, name)
    return value is not None and value.split(",", 1)[0].strip() == secure_value


def page_origin(scope) -> str | None:
    """The origin of the page that may open this socket, or None if its Host is not allowed."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    return f"{'https' if _is_secure(scope) else 'http'}://{host}"


def origin_allowed(scope) -> bool:
    """Django's CsrfViewMiddleware._origin_verified, for a websocket handshake."""
    origin = _header(scope, b"origin")
    own = page_origin(scope)
    if not origin or own is None:
        return False
    if origin == own:
        return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in {o for o in trusted if "*" not in o}:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        parsed.scheme == urlsplit(pattern).scheme
        and is_same_domain(parsed.netloc, urlsplit(pattern).netloc.lstrip("*"))
        for pattern in trusted
        if "*" in pattern
    )


class SameOriginWebsockets:
    """ASGI middleware: a websocket handshake whose Origin is not the site's gets a 403."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

"""The chat app's settings: each one's name, kind, default and lower bound, written once.

Every module reads ``django.conf.settings.CHAT_*`` (and ``OPENAI_*``) directly. Two
places give those settings values, and both take them from this table:

- chatsite/settings.py reads each one from the environment (or ``.env``) with
  chatsite/env.py's typed readers, so a bad value stops start-up naming the variable;
- a host site that mounts the app (docs/reusable-app.md) usually names none of them,
  so ``ChatConfig.ready()`` calls ``install_defaults()`` to fill in whatever is missing.
  A host's own value always wins, as does ``override_settings``.

The provider settings depend on each other (no key and no base URL means the demo
model); ``default_provider()`` is that rule, used by both.

tests/test_conf.py proves every setting here is listed in .env.example, the README's
Settings table and docs/reusable-app.md, with this default.
"""

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# How a value is read from the environment: "rate" is a django-ratelimit rate (10/h).
Kind = Literal["str", "int", "float", "bool", "rate"]


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    default: str | int | float | bool
    minimum: int | float | None = None
    help: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting("CHAT_SYSTEM_PROMPT", "str", "", help="system prompt for conversations without their own"),
    Setting("CHAT_MAX_SYSTEM_PROMPT_CHARS", "int", 32000, 1, "longest system prompt"),
    Setting("CHAT_TOKEN_ENCODING", "str", "o200k_base", help="tiktoken encoding for unknown models"),
    Setting("CHAT_UPSTREAM_CONNECT_TIMEOUT", "float", 10.0, 0.1, "seconds to connect to the provider"),
    Setting("CHAT_UPSTREAM_IDLE_TIMEOUT", "float", 60.0, 0.1, "seconds of silence before a reply ends"),
    # Keep-alive comments cannot hold a reply open past this; 0: no limit.
    Setting("CHAT_UPSTREAM_REPLY_DEADLINE", "float", 1800.0, 0, "seconds a whole reply may last"),
    Setting("CHAT_UPSTREAM_RETRIES", "int", 2, 0, "retries before the first text"),
    Setting("CHAT_UPSTREAM_MAX_RETRY_WAIT", "float", 20.0, 0, "longest retry-after honoured"),
    Setting("CHAT_UPSTREAM_MAX_CONNECTIONS", "int", 1000, 1, "connection pool size to the provider"),
    Setting(
        "CHAT_DIRECT_WRITES",
        "bool",
        True,
        help="fast writes to daphne's sockets; false uses daphne's own path",
    ),
    # Past this, a socket's deltas are skipped and it is caught up as it drains.
    Setting("CHAT_SOCKET_BUFFER_BYTES", "int", 512 * 1024, 4096, "bytes daphne may hold for one socket"),
    # With REDIS_URL (chat/layers.py): a worker's connections to Redis; a command finding all
    # busy waits for one, up to CHAT_REDIS_POOL_TIMEOUT, then fails naming this setting.
    Setting("CHAT_REDIS_MAX_CONNECTIONS", "int", 50, 2, "Redis connections per worker"),
    Setting("CHAT_REDIS_POOL_TIMEOUT", "float", 10.0, 0.1, "seconds to wait for a free Redis connection"),
    Setting("CHAT_MAX_MESSAGE_CHARS", "int", 32000, 1, "longest user message"),
    # Over every conversation and worker; 0: no cap.
    Setting("CHAT_MAX_REPLIES_PER_USER", "int", 5, 0, "replies one user may have streaming at once"),
    Setting("CHAT_MAX_FRAME_BYTES", "int", 256 * 1024, 1024, "largest websocket frame accepted"),
    Setting("CHAT_FRAMES_PER_SECOND", "float", 10.0, 0.1, "per-socket frame rate"),
    Setting("CHAT_FRAME_BURST", "int", 30, 1, "per-socket frame burst"),
    Setting("CHAT_CHECKPOINT_INTERVAL", "float", 1.0, 0.05, "seconds between saves of streaming text"),
    Setting("CHAT_LEASE_SECONDS", "float", 10.0, 0.5, "a reply not renewed this long is interrupted"),
    Setting("CHAT_DEMO_DELAY", "float", 0.03, 0, "seconds between the demo model's words"),
    # After a new chat's first reply, one short request asks the model for its title (chat.titles).
    Setting("CHAT_MODEL_TITLES", "bool", True, help="the model titles a new chat after its first reply"),
    Setting("CHAT_TITLE_MODEL", "str", "", help="the model that writes titles; blank: the chat's own"),
    # Invite-only by default: staff add users or invites in the admin.
    Setting("CHAT_OPEN_SIGNUP", "bool", False, help="anyone may sign up at /accounts/signup/"),
    Setting("CHAT_SIGNUP_RATE", "rate", "10/h", help="sign-ups per client address and per invite"),
    Setting("CHAT_PASSWORD_RESET_RATE", "rate", "5/h", help="reset requests per address and e-mail"),
    # Signing out closes the user's sockets at once (chat/signout.py); as a second line, a
    # socket re-reads its session before a send/edit/regenerate/stop at most this often.
    Setting("CHAT_SESSION_RECHECK_SECONDS", "float", 5.0, 0, "seconds between session re-reads"),
    # Attachments (chat.attachments): each limit refuses an upload with its own error code,
    # before anything is stored. Images larger than CHAT_IMAGE_MAX_SIDE are downscaled, not refused.
    Setting("CHAT_ATTACHMENT_MAX_BYTES", "int", 10 * 1024 * 1024, 1024, "largest file a user may attach"),
    Setting("CHAT_ATTACHMENTS_PER_MESSAGE", "int", 10, 1, "files one message may carry"),
    # Over everything a user has stored (sent and not yet sent); 0: no cap.
    Setting("CHAT_ATTACHMENT_QUOTA_BYTES", "int", 200 * 1024 * 1024, 0, "bytes of files one user may store"),
    Setting("CHAT_PDF_MAX_PAGES", "int", 100, 1, "pages of a PDF read for its text"),
    Setting("CHAT_ATTACHMENT_MAX_CHARS", "int", 200_000, 1, "characters of text one file may give"),
    Setting("CHAT_IMAGE_MAX_SIDE", "int", 2048, 64, "images are downscaled to fit this many pixels a side"),
    # /metrics (chat.metrics) is served only when one of these is set; with both, both must pass.
    Setting("CHAT_METRICS_TOKEN", "str", "", help="bearer token a Prometheus scrape must send"),
    Setting("CHAT_METRICS_ALLOW", "str", "", help="addresses/networks that may scrape /metrics"),
)

# Shorter tokens are refused at start-up: /metrics shows how busy the site is.
MIN_METRICS_TOKEN_CHARS = 16

DEFAULTS: dict[str, object] = {setting.name: setting.default for setting in SETTINGS}

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
DEMO_MODEL = "demo"


@dataclass(frozen=True)
class ProviderDefaults:
    demo: bool
    base_url: str
    model: str


def default_provider(
    api_key: str, base_url: str, model: str = "", demo: bool | None = None
) -> ProviderDefaults:
    """The site's own provider from what was given. With neither a key nor a base URL the
    offline demo model answers; a key alone means OpenAI. ``demo`` and ``model``, when
    given, are kept as they are."""
    if demo is None:
        demo = not api_key and not base_url
    if not demo and not base_url:
        base_url = OPENAI_DEFAULT_BASE_URL
    return ProviderDefaults(demo, base_url, model or (DEMO_MODEL if demo else OPENAI_DEFAULT_MODEL))


def check_chat_settings(values: Mapping[str, object]) -> None:
    """Stop start-up on settings that are each valid but wrong together."""
    prompt, longest = values["CHAT_SYSTEM_PROMPT"], values["CHAT_MAX_SYSTEM_PROMPT_CHARS"]
    if len(prompt) > longest:
        raise ImproperlyConfigured(
            f"CHAT_SYSTEM_PROMPT is {len(prompt)} characters; CHAT_MAX_SYSTEM_PROMPT_CHARS allows {longest}"
        )
    if not 0 < values["CHAT_CHECKPOINT_INTERVAL"] < values["CHAT_LEASE_SECONDS"]:
        raise ImproperlyConfigured("CHAT_LEASE_SECONDS must be longer than CHAT_CHECKPOINT_INTERVAL")
    token = values["CHAT_METRICS_TOKEN"]
    if token and (len(token) < MIN_METRICS_TOKEN_CHARS or token != token.strip()):
        raise ImproperlyConfigured(
            f"CHAT_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_CHARS} characters, without spaces "
            "around it (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    try:
        allowed_networks(values["CHAT_METRICS_ALLOW"])
    except ValueError as exc:
        raise ImproperlyConfigured(f"CHAT_METRICS_ALLOW: {exc}") from None


def allowed_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CHAT_METRICS_ALLOW's addresses and networks (comma or space separated); ValueError
    naming a bad one."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or a network such as 10.0.0.0/8") from None
    return networks


def install_defaults() -> None:
    """Give every setting the app reads a value, without touching ones the site set."""
    for name, value in DEFAULTS.items():
        if not hasattr(settings, name):
            setattr(settings, name, value)
    if not hasattr(settings, "OPENAI_API_KEY"):
        settings.OPENAI_API_KEY = ""
    provider = default_provider(
        settings.OPENAI_API_KEY,
        getattr(settings, "OPENAI_BASE_URL", ""),
        getattr(settings, "CHAT_MODEL", ""),
        getattr(settings, "CHAT_DEMO", None),
    )
    for name, value in (
        ("CHAT_DEMO", provider.demo),
        ("OPENAI_BASE_URL", provider.base_url),
        ("CHAT_MODEL", provider.model),
    ):
        if getattr(settings, name, None) in (None, ""):
            setattr(settings, name, value)

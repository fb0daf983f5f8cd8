"""The chat app's settings, for when it is mounted inside another Django site.

Every module reads ``django.conf.settings.CHAT_*`` (and ``OPENAI_*``) directly.
chatsite/settings.py sets them all from the environment; a host site usually
names none of them, so ``ChatConfig.ready()`` fills in whatever is missing with
the defaults below. A host's own value always wins, as does ``override_settings``.
See docs/reusable-app.md.
"""

from django.conf import settings

DEFAULTS: dict[str, object] = {
    "CHAT_SYSTEM_PROMPT": "",
    "CHAT_TOKEN_ENCODING": "o200k_base",
    "CHAT_UPSTREAM_CONNECT_TIMEOUT": 10.0,
    "CHAT_UPSTREAM_IDLE_TIMEOUT": 60.0,
    "CHAT_UPSTREAM_REPLY_DEADLINE": 1800.0,
    "CHAT_UPSTREAM_RETRIES": 2,
    "CHAT_UPSTREAM_MAX_RETRY_WAIT": 20.0,
    "CHAT_UPSTREAM_HTTP": "auto",
    "CHAT_UPSTREAM_MAX_CONNECTIONS": 1000,
    "CHAT_SOCKET_BUFFER_BYTES": 512 * 1024,
    "CHAT_DIRECT_WRITES": True,
    "CHAT_MAX_MESSAGE_CHARS": 32000,
    "CHAT_MAX_SYSTEM_PROMPT_CHARS": 32000,
    "CHAT_MAX_REPLIES_PER_USER": 5,
    "CHAT_MAX_FRAME_BYTES": 256 * 1024,
    "CHAT_FRAMES_PER_SECOND": 10.0,
    "CHAT_FRAME_BURST": 30,
    "CHAT_CHECKPOINT_INTERVAL": 1.0,
    "CHAT_LEASE_SECONDS": 10.0,
    "CHAT_DEMO_DELAY": 0.03,
    "CHAT_OPEN_SIGNUP": False,
    "CHAT_SESSION_RECHECK_SECONDS": 5.0,
    "CHAT_SIGNUP_RATE": "10/h",
    "CHAT_PASSWORD_RESET_RATE": "5/h",
}

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


def install_defaults() -> None:
    """Give every setting the app reads a value, without touching ones the site set."""
    for name, value in DEFAULTS.items():
        if not hasattr(settings, name):
            setattr(settings, name, value)
    # The provider settings depend on each other, as in chatsite/settings.py: with
    # neither a key nor a base URL the offline demo model answers.
    if not hasattr(settings, "OPENAI_API_KEY"):
        settings.OPENAI_API_KEY = ""
    if not hasattr(settings, "OPENAI_BASE_URL"):
        settings.OPENAI_BASE_URL = ""
    if not hasattr(settings, "CHAT_DEMO"):
        settings.CHAT_DEMO = not settings.OPENAI_API_KEY and not settings.OPENAI_BASE_URL
    if not settings.CHAT_DEMO and not settings.OPENAI_BASE_URL:
        settings.OPENAI_BASE_URL = OPENAI_DEFAULT_BASE_URL
    if not hasattr(settings, "CHAT_MODEL"):
        settings.CHAT_MODEL = "demo" if settings.CHAT_DEMO else "gpt-4o-mini"

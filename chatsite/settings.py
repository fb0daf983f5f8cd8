"""Settings for the chat site, read from the environment.

Every variable is listed with its default in .env.example and the README. A bad
value stops start-up with a message naming the variable (see chatsite/env.py).
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from chatsite.env import env_bool, env_float, env_int, env_list, env_str, env_url

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("CHAT_DATA_DIR", str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """Use DJANGO_SECRET_KEY, or a random key kept in the data directory.

    Zero-config installs get a stable, private key without anyone choosing one;
    sessions survive restarts because the key is stored, not regenerated.
    """
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_HTTPS_PROXY", False) else None
)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database() -> dict:
    url = env_url(
        "DATABASE_URL",
        f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        ("sqlite", "postgres", "postgresql", "pgsql"),
    )
    try:
        db = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at
        # BEGIN, so two writers queue on the busy timeout instead of one failing
        # with "database is locked" when it upgrades a read transaction.
        db["CONN_MAX_AGE"] = None  # one long-lived connection per thread; opening one runs the PRAGMAs
        db["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    return db


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_url("REDIS_URL", "", ("redis", "rediss", "unix"))
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # channels_redis waits for messages with a 5 s BZPOPMIN; redis-py 8 reads
                # with a 5 s socket timeout by default, so idle sockets died every ~5 s
                # (redis/redis-py#4091, django/channels_redis#422). Read longer than that.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve static files straight from the app folders too, so `collectstatic` is an
# optimisation for production rather than a set-up step a newcomer can miss.
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        # httpx logs every request line at INFO; keep it quiet (it never logs headers).
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# --- Chat: the upstream model -------------------------------------------------
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", "", ("http", "https"))
# With neither a key nor a base URL, the built-in demo model answers (offline).
CHAT_DEMO = not OPENAI_API_KEY and not OPENAI_BASE_URL
if not CHAT_DEMO and not OPENAI_BASE_URL:
    OPENAI_BASE_URL = "https://api.openai.com/v1"
CHAT_MODEL = env_str("CHAT_MODEL", "demo" if CHAT_DEMO else "gpt-4o-mini")
CHAT_SYSTEM_PROMPT = env_str("CHAT_SYSTEM_PROMPT", "")
CHAT_TOKEN_ENCODING = env_str("CHAT_TOKEN_ENCODING", "o200k_base")
CHAT_UPSTREAM_CONNECT_TIMEOUT = env_float("CHAT_UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.1)
CHAT_UPSTREAM_IDLE_TIMEOUT = env_float("CHAT_UPSTREAM_IDLE_TIMEOUT", 60.0, minimum=0.1)
# Seconds a whole reply may last (keep-alive comments cannot hold it open past this); 0: no limit.
CHAT_UPSTREAM_REPLY_DEADLINE = env_float("CHAT_UPSTREAM_REPLY_DEADLINE", 1800.0, minimum=0)
CHAT_UPSTREAM_RETRIES = env_int("CHAT_UPSTREAM_RETRIES", 2, minimum=0)
CHAT_UPSTREAM_MAX_RETRY_WAIT = env_float("CHAT_UPSTREAM_MAX_RETRY_WAIT", 20.0, minimum=0)
CHAT_UPSTREAM_HTTP = env_str("CHAT_UPSTREAM_HTTP", "auto")
if CHAT_UPSTREAM_HTTP not in ("auto", "aiohttp", "httpx"):
    raise ImproperlyConfigured(
        f"CHAT_UPSTREAM_HTTP must be auto, aiohttp or httpx, not {CHAT_UPSTREAM_HTTP!r}"
    )
CHAT_UPSTREAM_MAX_CONNECTIONS = env_int("CHAT_UPSTREAM_MAX_CONNECTIONS", 1000, minimum=1)
# Bytes daphne may hold for one socket before its deltas are skipped (caught up later).
CHAT_SOCKET_BUFFER_BYTES = env_int("CHAT_SOCKET_BUFFER_BYTES", 512 * 1024, minimum=4096)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 32000, minimum=1)
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 256 * 1024, minimum=1024)
CHAT_FRAMES_PER_SECOND = env_float("CHAT_FRAMES_PER_SECOND", 10.0, minimum=0.1)
CHAT_FRAME_BURST = env_int("CHAT_FRAME_BURST", 30, minimum=1)
CHAT_CHECKPOINT_INTERVAL = env_float("CHAT_CHECKPOINT_INTERVAL", 1.0, minimum=0.05)
CHAT_LEASE_SECONDS = env_float("CHAT_LEASE_SECONDS", 10.0, minimum=0.5)
CHAT_DEMO_DELAY = env_float("CHAT_DEMO_DELAY", 0.03, minimum=0)

# --- Chat: accounts ---------------------------------------------------------------
# Invite-only by default: staff add users or invites in the admin. True opens
# /accounts/signup/ to anyone who can reach the site.
CHAT_OPEN_SIGNUP = env_bool("CHAT_OPEN_SIGNUP", False)

if not 0 < CHAT_CHECKPOINT_INTERVAL < CHAT_LEASE_SECONDS:
    raise ImproperlyConfigured("CHAT_LEASE_SECONDS must be longer than CHAT_CHECKPOINT_INTERVAL")

# tiktoken reads its vocabulary cache from this variable; keep it in the data
# directory by default so `fetch_vocabularies` survives reboots (tmp does not).
if not os.environ.get("TIKTOKEN_CACHE_DIR"):
    os.environ["TIKTOKEN_CACHE_DIR"] = str(DATA_DIR / "tiktoken-cache")

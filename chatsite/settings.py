"""Settings for the chat site, read from the environment and `.env`.

`.env` (beside manage.py, or CHAT_ENV_FILE) is read first, under the environment's own
variables, so manage.py, daphne and ./run.sh see the same values (chatsite/env.py).
Every variable is listed with its default in .env.example and the README. A bad
value stops start-up with a message naming the variable.
"""

import json
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from chat.conf import SETTINGS as CHAT_SETTINGS
from chat.conf import check_chat_settings, default_provider
from chatsite.env import (
    BASE_DIR,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_setting,
    env_str,
    env_url,
    load_env_file,
)

load_env_file()
DATA_DIR = Path(env_str("CHAT_DATA_DIR", str(BASE_DIR / "data")))
# Private (0700) when we create it: it holds the database (sessions, password hashes,
# provider keys) and the secret key. One that exists is left as the operator made it (it
# may be a volume shared on purpose); the secrets inside are 0600 either way.
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)


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
# Browsers remember to use only HTTPS for this long (seconds); sent on HTTPS responses only.
# 0 (off) by default: once sent it cannot be taken back before it runs out (docs/deploy.md).
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0, minimum=0)

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
    "axes",
    "django_ratelimit",
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
    "chat.headers.SecurityHeaders",
    # Last, as axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
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


def _private_sqlite(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it would use 0644 under the usual
    umask), and tighten one made earlier. SQLite gives its -wal and -shm files the
    database file's mode, so they are private too."""
    if str(path) in ("", ":memory:") or path.name.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(0o600)
    except OSError:  # not ours, or a read-only place: SQLite reports what matters on connect
        pass


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
        _private_sqlite(Path(db["NAME"]))
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
# CHANNEL_LAYERS: below, after the chat settings that size its Redis pool.

# The cache holds django-ratelimit's counters (sign-up, password reset). They must be
# shared by every worker: Redis when there is one (several workers need it anyway); else
# one process serves the site and its own memory is the whole truth.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    # Django's own Redis cache has the atomic incr django-ratelimit needs; it only
    # lists django-redis's by name.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # "Not a shared cache": true, and without REDIS_URL there is one process to share with.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in throttling (django-axes): after CHAT_LOGIN_FAILURE_LIMIT wrong passwords for
# one username from one address, that pair is locked out for CHAT_LOGIN_COOLOFF_MINUTES,
# on the site's sign-in page and the admin's. Counting username and address together
# means nobody can lock a colleague out from elsewhere. Behind a proxy the address must
# be the client's (docs/deploy.md).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
CHAT_LOGIN_FAILURE_LIMIT = env_int("CHAT_LOGIN_FAILURE_LIMIT", 5, minimum=1)
CHAT_LOGIN_COOLOFF_MINUTES = env_float("CHAT_LOGIN_COOLOFF_MINUTES", 15.0, minimum=0.1)
AXES_FAILURE_LIMIT = CHAT_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=CHAT_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # a right password clears that pair's earlier failures
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False  # axes prints a banner at start-up otherwise

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


def _attachment_storage() -> dict:
    """Where attached files are kept (chat.attachments): by default the data directory,
    never a static or media path a web server would hand out; downloads go through a view
    that checks who asks. Any Django storage backend (django-storages' S3, …) by setting."""
    backend = env_str("CHAT_ATTACHMENT_STORAGE", "django.core.files.storage.FileSystemStorage")
    raw = env_str("CHAT_ATTACHMENT_STORAGE_OPTIONS", "")
    try:
        options = json.loads(raw) if raw else {}
    except ValueError:
        raise ImproperlyConfigured(
            f"CHAT_ATTACHMENT_STORAGE_OPTIONS must be a JSON object, not {raw!r}"
        ) from None
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"CHAT_ATTACHMENT_STORAGE_OPTIONS must be a JSON object, not {raw!r}")
    if backend == "django.core.files.storage.FileSystemStorage":
        # base_url None: the files have no public URL.
        options = {
            "location": str(DATA_DIR / "files"),
            "directory_permissions_mode": 0o700,
            "file_permissions_mode": 0o600,
            **options,
        }
    return {"BACKEND": backend, "OPTIONS": options}


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    "chat_attachments": _attachment_storage(),
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
        "axes": {"level": "WARNING"},  # failures and lockouts, not a line per check
    },
}

# --- Chat: the app's own settings -----------------------------------------------------
# Each CHAT_* setting the app reads, with its default and lower bound, is in chat/conf.py's
# table, written once; a host site mounting the app gets the same defaults from it.
_chat = {s.name: env_setting(s.name, s.kind, s.default, s.minimum) for s in CHAT_SETTINGS}

# The upstream model. With neither a key nor a base URL, the built-in demo model answers
# (offline); a key alone means OpenAI (chat.conf.default_provider).
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
_provider = default_provider(
    OPENAI_API_KEY, env_url("OPENAI_BASE_URL", "", ("http", "https")), env_str("CHAT_MODEL")
)
OPENAI_BASE_URL = _provider.base_url
_chat.update(CHAT_DEMO=_provider.demo, CHAT_MODEL=_provider.model)
check_chat_settings(_chat)
globals().update(_chat)
# The channel layer: Redis with several workers (chat/layers.py: channels_redis's layer
# with a pool that waits for a free connection instead of failing, sized by
# CHAT_REDIS_MAX_CONNECTIONS per worker; docs/deploy.md), else in this process's memory.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.layers.ChannelLayer",
            "CONFIG": {
                # channels_redis waits for messages with a 5 s BZPOPMIN; redis-py 8 reads
                # with a 5 s socket timeout by default, so idle sockets died every ~5 s
                # (redis/redis-py#4091, django/channels_redis#422). Read longer than that.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": 1000,
                "expiry": 30,
                "max_connections": _chat["CHAT_REDIS_MAX_CONNECTIONS"],
                "pool_timeout": _chat["CHAT_REDIS_POOL_TIMEOUT"],
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
del _chat, _provider

# tiktoken reads its vocabulary cache from this variable; keep it in the data
# directory by default so `fetch_vocabularies` survives reboots (tmp does not).
if not os.environ.get("TIKTOKEN_CACHE_DIR"):
    os.environ["TIKTOKEN_CACHE_DIR"] = str(DATA_DIR / "tiktoken-cache")

"""Where settings come from: the environment, and a `.env` file the app reads itself.

Each typed reader fails loudly, naming the variable, so a typo in a deployment stops
start-up instead of surfacing later as a confusing runtime error.
"""

import os
import re
from pathlib import Path
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent


def env_file() -> Path | None:
    """The `.env` file to read: CHAT_ENV_FILE, else `.env` beside manage.py.

    Under pytest only CHAT_ENV_FILE is read: a developer's own `.env` (a provider key,
    say) must not change what the suite tests, in its process or the servers it starts.
    """
    named = os.environ.get("CHAT_ENV_FILE", "").strip()
    if named:
        return Path(named)
    if os.environ.get("PYTEST_VERSION"):
        return None
    return BASE_DIR / ".env"


def load_env_file() -> None:
    """Put the `.env` file's variables into the environment, under those already there.

    Read here, when settings load, so manage.py, daphne and ./run.sh see the same values
    through one parser (python-dotenv) instead of a shell's and systemd's. A variable set
    in the environment wins over the file. Values are taken literally (no `$VAR`
    expansion, as systemd's EnvironmentFile did), so a secret may contain `$`.
    CHAT_ENV_FILE=/dev/null reads none.
    """
    path = env_file()
    if path is None:
        return
    if not path.exists():
        if os.environ.get("CHAT_ENV_FILE", "").strip():
            raise ImproperlyConfigured(f"CHAT_ENV_FILE names {str(path)!r}, which does not exist")
        return
    load_dotenv(path, override=False, interpolate=False, encoding="utf-8")


TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    """The variable's value; unset and empty (`NAME=` in .env) both mean the default."""
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_number(name: str, default, kind=float, minimum=None):
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        kind_name = "a whole number" if kind is int else "a number"
        raise ImproperlyConfigured(f"{name} must be {kind_name}, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {raw!r}")
    return value


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    return env_number(name, default, int, minimum)


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    return env_number(name, default, float, minimum)


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_url(name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if not value:
        return value
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name} must be a URL starting with {allowed}, not {value!r}")
    return value


RATE = re.compile(r"^[1-9][0-9]*/[1-9]?[0-9]*[smhd]$")


def env_rate(name: str, default: str) -> str:
    """A django-ratelimit rate: a count per period, e.g. `10/h`, `5/15m`."""
    value = env_str(name, default)
    if not RATE.match(value):
        raise ImproperlyConfigured(
            f"{name} must be a count per period such as 10/h, 5/15m or 100/d, not {value!r}"
        )
    return value


_READERS = {
    "str": lambda name, default, minimum: env_str(name, default),
    "int": lambda name, default, minimum: env_int(name, default, minimum),
    "float": lambda name, default, minimum: env_float(name, default, minimum),
    "bool": lambda name, default, minimum: env_bool(name, default),
    "rate": lambda name, default, minimum: env_rate(name, default),
}


def env_setting(name: str, kind: str, default, minimum=None):
    """A setting of one of chat/conf.py's kinds, read by the matching reader above."""
    return _READERS[kind](name, default, minimum)


def listen_address() -> tuple[str, int]:
    """Where ./run.sh's daphne listens: HOST (127.0.0.1) and PORT (8000), from the
    environment or `.env` like every other setting."""
    load_env_file()
    return env_str("HOST", "127.0.0.1"), env_int("PORT", 8000, minimum=1)


if __name__ == "__main__":  # python -m chatsite.env: the address, for ./run.sh
    print(*listen_address())

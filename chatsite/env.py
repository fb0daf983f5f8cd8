"""Typed readers for settings that come from the environment.

Each reader fails loudly, naming the variable, so a typo in a deployment stops
start-up instead of surfacing later as a confusing runtime error.
"""

import os
import re
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

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

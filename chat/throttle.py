"""Limits on making accounts and on asking for password resets (issue #12, "Abuse limits").

Wrong passwords are django-axes' to count (chatsite/settings.py): a lockout is about
failures, and axes keeps them per username and address, in the database, site and
admin alike. Sign-ups and reset requests are not failures, so django-ratelimit counts
them instead (in the cache: shared through Redis when there are several workers):

- open sign-up: per client address;
- invite sign-up: per invite, not per address, so a team joining from one office
  network is not refused, while no one can hammer one invite's form;
- password-reset requests: per client address and per e-mail address, so one inbox
  cannot be flooded from many addresses.

A request over the limit gets a page that says so (429) and nothing is done.
"""

from collections.abc import Callable, Sequence
from functools import wraps

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_ratelimit.core import is_ratelimited

UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}

Key = str | Callable[[str, HttpRequest], str]


def describe(rate: str) -> str:
    """`10/h` -> "10 an hour"; `5/15m` -> "5 every 15 minutes"."""
    count, period = rate.split("/")
    number, unit = period[:-1], UNITS[period[-1]]
    if number in ("", "1"):
        return f"{count} {'an' if unit == 'hour' else 'a'} {unit}"
    return f"{count} every {number} {unit}s"


def over_limit(request: HttpRequest, group: str, rate: str, keys: Sequence[Key]) -> bool:
    """Count this request against each key's limit; whether any is now exceeded."""
    # Every key is counted, not just up to the first one over: a request refused for
    # its address still counts against its e-mail address, and the other way round.
    over = [
        is_ratelimited(request, group=f"{group}:{index}", key=key, rate=rate, method="POST", increment=True)
        for index, key in enumerate(keys)
    ]
    return any(over)


def refusal(request: HttpRequest, what: str, rate: str) -> HttpResponse:
    return render(request, "registration/throttled.html", {"what": what, "limit": describe(rate)}, status=429)


def limit_posts(group: str, rate_setting: str, what: str, keys: Sequence[Key] = ("ip",)):
    """A view decorator: POSTs beyond settings.<rate_setting> get the refusal page."""

    def decorator(view):
        @wraps(view)
        def limited(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            rate = getattr(settings, rate_setting)
            if request.method == "POST" and over_limit(request, group, rate, keys):
                return refusal(request, what, rate)
            return view(request, *args, **kwargs)

        return limited

    return decorator


# Django's own view (django.contrib.auth.urls), mounted ahead of it in chatsite/urls.py.
password_reset = limit_posts(
    "password-reset", "CHAT_PASSWORD_RESET_RATE", "Password-reset requests", keys=("ip", "post:email")
)(auth_views.PasswordResetView.as_view())

"""Sign-up policy for the registration templates, read when the page renders (so
override_settings and host sites' settings apply without a context processor)."""

from django import template
from django.conf import settings

from chat import accounts

register = template.Library()


@register.simple_tag
def open_signup() -> bool:
    return bool(settings.CHAT_OPEN_SIGNUP)


@register.simple_tag
def initial_password_unused() -> bool:
    return accounts.initial_password_unused()

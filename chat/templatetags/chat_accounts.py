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


@register.simple_tag
def password_login() -> bool:
    return bool(settings.CHAT_PASSWORD_LOGIN)


@register.simple_tag
def single_sign_on() -> str:
    """The SSO button's label, or "" when single sign-on is not set up."""
    from chat import oidc

    return settings.CHAT_OIDC_LABEL if oidc.enabled() else ""

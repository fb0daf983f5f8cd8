from django import template
from django.utils.safestring import SafeString, mark_safe

from chat.rendering import format_stats, render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Markdown to HTML that is safe to insert: render_markdown() sanitises with nh3."""
    return mark_safe(render_markdown(text))  # noqa: S308 - sanitised above


@register.filter
def stats(message) -> str:
    return format_stats(message)

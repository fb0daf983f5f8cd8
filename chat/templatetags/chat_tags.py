from django import template
from django.utils.safestring import SafeString, mark_safe

from chat.rendering import duration_text, format_stats, quiet_stats, render_markdown, stats_help, token_text

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Markdown to HTML that is safe to insert: render_markdown() sanitises with nh3."""
    return mark_safe(render_markdown(text))  # noqa: S308 - sanitised above


@register.filter
def stats(message) -> str:
    return format_stats(message)


@register.filter(name="stats_help")
def stats_help_filter(message) -> str:
    return stats_help(message)


@register.filter
def stats_quiet(message) -> str:
    return quiet_stats(message)


@register.filter
def duration(ms: float | None) -> str:
    """Milliseconds as "850 ms" or "3.2 s"; "—" when there is no figure."""
    return "—" if ms is None else duration_text(ms)


@register.filter
def tokens(count: int | None) -> str:
    return token_text(count)

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from chat.rendering import duration_text, format_stats, quiet_stats, render_markdown, stats_help, token_text
from chat.usage import total_text

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


@register.simple_tag
def total_tokens(total: int | None, not_counted: int = 0, hint: str = "") -> str:
    """A sum of token counts ("1,234"), saying "unknown" (with the hint how to fix it as its
    title) when it leaves out messages that were not counted."""
    text = total_text(total, not_counted)
    if not not_counted:
        return text
    return format_html('<span class="unknown" title="{}">{}</span>', hint, text)


@register.filter
def file_size(size: int) -> str:
    """ "12 KB", "1.4 MB": as static/chat/messages.js's formatSize words it."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KB"
    return f"{size / 1024 / 1024:.1f} MB"

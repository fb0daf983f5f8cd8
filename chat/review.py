"""A conversation as a reviewer reads it in the admin: rendered as the chat page renders it,
with its figures worded for people, and the admin's conversation page built from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, Q, Sum
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe

from chat import attachments
from chat.models import Conversation, Message
from chat.rendering import duration_text, render_markdown, token_text
from chat.usage import total_text

# Where "unknown" comes from and what to do about it, said once on each page that shows it.
UNKNOWN_HINT = (
    "“unknown”: the token count could not be made when the message was written, because "
    "tiktoken's vocabularies were not on the server. Run “python manage.py fetch_vocabularies” "
    "(it needs internet access once) so that messages from then on are counted."
)

STATUS_TEXT = {
    Message.Status.STREAMING: "being written",
    Message.Status.CANCELLED: "stopped by the user",
    Message.Status.FAILED: "failed",
    Message.Status.INTERRUPTED: "interrupted",
}


@dataclass
class Entry:
    """One message of the transcript: the row, its body as safe HTML, and its figures."""

    message: Message
    html: SafeString  # Markdown rendered and sanitised (a reply), or the text escaped (a person's)
    figures: list[tuple[str, str]]  # (label, value), in reading order
    status: str  # "" when finished normally
    attachments: list[dict] = field(default_factory=list)  # its files (chat.attachments.payload)

    @property
    def markdown(self) -> bool:
        return self.message.role == Message.Role.ASSISTANT

    @property
    def unknown(self) -> bool:
        return any(value == "unknown" for _, value in self.figures)


def _figures(message: Message) -> list[tuple[str, str]]:
    if message.role != Message.Role.ASSISTANT:
        return [("tokens", token_text(message.token_count))]
    streaming = message.status == Message.Status.STREAMING
    figures = [("model", message.model or "(default)")]
    if not streaming:
        figures += [
            ("prompt", token_text(message.prompt_tokens)),
            ("completion", token_text(message.completion_tokens)),
        ]
    if message.upstream_prompt_tokens is not None or message.upstream_completion_tokens is not None:
        provider = (
            token_text(message.upstream_prompt_tokens),
            token_text(message.upstream_completion_tokens),
        )
        figures.append(("provider's count", " / ".join(provider)))
    if message.ttft_ms is not None:
        figures.append(("first token", duration_text(message.ttft_ms)))
    if message.duration_ms is not None:
        figures.append(("total", duration_text(message.duration_ms)))
    if message.finish_reason:
        figures.append(("finish", message.finish_reason))
    return figures


def entries(conversation: Conversation) -> list[Entry]:
    """Every message, earlier versions included, in the order they were written."""
    result = []
    messages = list(conversation.messages.order_by("id"))
    files = attachments.of_messages(m.pk for m in messages if m.role == Message.Role.USER)
    for message in messages:
        if message.role == Message.Role.ASSISTANT:
            html = mark_safe(render_markdown(message.content))  # noqa: S308 - nh3-sanitised
        else:  # as the chat page shows it: as typed, line breaks kept (white-space: pre-wrap)
            html = conditional_escape(message.content)
        status = STATUS_TEXT.get(message.status, "")
        result.append(Entry(message, html, _figures(message), status, files.get(message.pk, [])))
    return result


def totals(conversation: Conversation) -> dict[str, str]:
    """The conversation's token sums, saying so when they leave out replies not counted."""
    replies = conversation.messages.filter(role=Message.Role.ASSISTANT).exclude(
        status=Message.Status.STREAMING
    )
    sums = replies.aggregate(
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        prompt_unknown=Count("id", filter=Q(prompt_tokens__isnull=True)),
        completion_unknown=Count("id", filter=Q(completion_tokens__isnull=True)),
    )
    return {
        "prompt": total_text(sums["prompt"], sums["prompt_unknown"]),
        "completion": total_text(sums["completion"], sums["completion_unknown"]),
    }

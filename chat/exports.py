"""A conversation as Markdown or JSON, for its owner and for staff."""

from chat import attachments
from chat.models import Conversation, Message

FIELDS = (
    "id",
    "role",
    "content",
    "status",
    "finish_reason",
    "model",
    "token_count",
    "prompt_tokens",
    "completion_tokens",
    "usage",
    "reasoning",
    "refusal",
    "error_code",
    "error_detail",
    "ttft_ms",
    "duration_ms",
    "superseded",
    "created_at",
)


def _messages(conversation: Conversation):
    return Message.objects.filter(conversation=conversation).order_by("id")


def conversation_json(conversation: Conversation) -> dict:
    messages = []
    rows = list(_messages(conversation).values(*FIELDS))
    files = attachments.of_messages(m["id"] for m in rows if m["role"] == Message.Role.USER)
    for message in rows:
        message["created_at"] = message["created_at"].isoformat()
        # By reference (name, size, type, tokens, where to download it), never the bytes.
        message["attachments"] = files.get(message["id"], [])
        messages.append(message)
    return {
        "id": conversation.id,
        "title": str(conversation),
        "user": conversation.user.get_username(),
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "created_at": conversation.created_at.isoformat(),
        "messages": messages,
    }


def conversation_markdown(conversation: Conversation) -> str:
    lines = [
        f"# {conversation}",
        "",
        f"_{conversation.user.get_username()}, {conversation.created_at:%Y-%m-%d %H:%M} UTC_",
        "",
    ]
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt, ""]
    messages = list(_messages(conversation))
    files = attachments.of_messages(m.pk for m in messages if m.role == Message.Role.USER)
    for message in messages:
        heading = message.get_role_display().capitalize()
        notes = []
        if message.superseded:
            notes.append("earlier version")
        if message.role == Message.Role.ASSISTANT and message.status != Message.Status.FINISHED:
            notes.append(message.status)
        if notes:
            heading += f" ({', '.join(notes)})"
        lines += [f"## {heading}", "", message.content, ""]
        for attached in files.get(message.pk, []):
            lines.append(_file_line(attached))
        if message.pk in files:
            lines.append("")
        if message.error_detail:
            lines += [f"> {message.error_detail}", ""]
    return "\n".join(lines)


def _file_line(attached: dict) -> str:
    """A file in the Markdown export: a link to its download, never its contents."""
    tokens = "tokens unknown" if attached["tokens"] is None else f"{attached['tokens']:,} tokens"
    name = attached["name"].replace("[", "\\[").replace("]", "\\]")
    return (
        f"- Attached: [{name}](<{attached['url']}>) ({attached['content_type']}, "
        f"{attached['size']:,} bytes, {tokens})"
    )


def filename(conversation: Conversation, extension: str) -> str:
    return f"conversation-{conversation.id}.{extension}"

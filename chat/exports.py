"""A conversation as Markdown or JSON, for its owner and for staff."""

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
    for message in _messages(conversation).values(*FIELDS):
        message["created_at"] = message["created_at"].isoformat()
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
    for message in _messages(conversation):
        heading = message.get_role_display().capitalize()
        notes = []
        if message.superseded:
            notes.append("earlier version")
        if message.role == Message.Role.ASSISTANT and message.status != Message.Status.FINISHED:
            notes.append(message.status)
        if notes:
            heading += f" ({', '.join(notes)})"
        lines += [f"## {heading}", "", message.content, ""]
        if message.error_detail:
            lines += [f"> {message.error_detail}", ""]
    return "\n".join(lines)


def filename(conversation: Conversation, extension: str) -> str:
    return f"conversation-{conversation.id}.{extension}"

"""Which server and model a conversation talks to, and how.

Models configured in the admin come first; the environment's OPENAI_* settings
are the fallback, so a zero-config install and an env-configured one need no
admin work at all.
"""

import time
from dataclasses import dataclass

from django.conf import settings

from chat.models import ChatModel, Conversation
from chat.upstream import Provider


@dataclass(frozen=True)
class Target:
    provider: Provider
    model: str
    label: str
    encoding: str = ""
    context_window: int | None = None
    max_reply_tokens: int = 1024
    stream: bool = True
    include_usage: bool = True
    api_style: str = "chat"
    # Images go only to models staff marked as reading them (issue #16); the environment's
    # own model is not one until staff add it in the admin and say so.
    accepts_images: bool = False


def from_chat_model(chat_model: ChatModel) -> Target:
    source = chat_model.provider
    return Target(
        provider=Provider(
            base_url=source.base_url.rstrip("/"),
            api_key=source.key(),
            headers=tuple((str(k), str(v)) for k, v in (source.extra_headers or {}).items()),
        ),
        model=chat_model.name,
        label=str(chat_model),
        encoding=chat_model.encoding,
        context_window=chat_model.context_window,
        max_reply_tokens=chat_model.max_reply_tokens,
        stream=chat_model.stream,
        include_usage=chat_model.include_usage,
        api_style=chat_model.api_style,
        accepts_images=chat_model.accepts_images,
    )


_models: tuple[float, list[ChatModel]] | None = None
MODELS_TTL = 5.0  # seconds; other worker processes see admin changes within this


def available_models() -> list[ChatModel]:
    """Enabled models of enabled providers, default first. Read once per MODELS_TTL, not per
    message: this process forgets them when one is saved, other processes when the TTL ends."""
    global _models
    now = time.monotonic()
    if _models is None or _models[0] < now:
        rows = ChatModel.objects.filter(enabled=True, provider__enabled=True).select_related("provider")
        _models = (now + MODELS_TTL, list(rows.order_by("-is_default", "id")))
    return _models[1]


def forget_models(**kwargs) -> None:
    global _models
    _models = None


def resolve(conversation: Conversation) -> Target:
    """The conversation's chosen model, else the admin's default model, else the environment's."""
    models = available_models()
    if conversation.model:
        chosen = next((m for m in models if m.name == conversation.model), None)
    else:
        chosen = next((m for m in models if m.is_default), None)
    if chosen is not None:
        return from_chat_model(chosen)
    model = conversation.model or settings.CHAT_MODEL
    return Target(provider=Provider.from_settings(), model=model, label=model)


def choices() -> list[dict]:
    """Models a user may pick in the page: admin-configured ones, plus the environment's default.
    `demo` marks the built-in demo model, which the page labels as not a real LLM (issue #14)."""
    options = [
        {"name": m.name, "label": str(m), "default": m.is_default, "demo": False} for m in available_models()
    ]
    if not any(option["default"] for option in options):
        label = "Demo model (not a real LLM)" if settings.CHAT_DEMO else settings.CHAT_MODEL
        options.insert(
            0, {"name": settings.CHAT_MODEL, "label": label, "default": True, "demo": settings.CHAT_DEMO}
        )
    return options

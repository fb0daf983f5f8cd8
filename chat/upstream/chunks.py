"""Reading OpenAI-compatible stream chunks, with every provider variation we know of.

A chunk never crashes the reader: missing, null or oddly typed fields are read
as absent. Provider quirks are named where they are handled. Whatever is kept
is stored as it is read (usage in a JSON column, finish_reason in a short one),
so a value that a database would refuse is never kept.
"""

from dataclasses import dataclass

from chat.text import storable

# Message.finish_reason is a CharField(max_length=32): a longer value fails the save on PostgreSQL.
MAX_FINISH_REASON = 32
# The admin's usage report casts usage values to PostgreSQL's integer (int4).
_MAX_COUNT = 2**31 - 1


@dataclass(slots=True)
class Chunk:
    content: str = ""
    reasoning: str = ""
    refusal: str = ""
    finish_reason: str = ""
    usage: dict | None = None
    error: dict | None = None


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # Mistral: a list of {"type": "text", "text": ...} parts
        return "".join(
            part.get("text", "") if isinstance(part, dict) and isinstance(part.get("text"), str) else ""
            for part in value
        )
    return ""  # None (llama.cpp's first delta) or anything unexpected


def _content(value) -> tuple[str, str]:
    """(content, reasoning) from `delta.content`. Mistral's magistral models send a list
    of typed parts in which `{"type": "thinking", "thinking": [text parts]}` is the
    model's reasoning, not its answer."""
    if isinstance(value, str):
        return value, ""
    if not isinstance(value, list):
        return "", ""
    content, reasoning = [], []
    for part in value:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "thinking":
            reasoning.append(_text(part.get("thinking")))
        elif isinstance(part.get("text"), str):
            content.append(part["text"])
    return "".join(content), "".join(reasoning)


def _count(value) -> bool:
    # bool is an int subclass, and True is no token count.
    return type(value) is int and 0 <= value <= _MAX_COUNT


def token_usage(value) -> dict | None:
    """Usage with only token counts kept: non-negative integers that fit PostgreSQL's
    integer, top level or one level down (prompt_tokens_details ...). Strings, floats
    (Groq's timings), booleans and deeper structures are dropped: stored as they came,
    one made the admin's usage report fail on every load (issue #12)."""
    if not isinstance(value, dict):
        return None
    kept = {}
    for key, item in value.items():
        if _count(item):
            kept[key] = item
        elif isinstance(item, dict):
            details = {k: v for k, v in item.items() if _count(v)}
            if details:
                kept[key] = details
    return kept or None


def _error(value) -> dict:
    if isinstance(value, dict):
        message = value.get("message") or value.get("error") or "the provider reported an error"
        code = value.get("code")
        return {"message": str(message), "code": None if code is None else str(code)}
    return {"message": str(value) or "the provider reported an error", "code": None}


def parse_chunk(obj) -> Chunk:
    chunk = Chunk()
    if not isinstance(obj, dict):
        return chunk
    if obj.get("error"):
        chunk.error = _error(obj["error"])
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        x_groq = obj.get("x_groq")
        usage = x_groq.get("usage") if isinstance(x_groq, dict) else None  # Groq
    if usage is not None:
        chunk.usage = token_usage(usage)  # cumulative forms (vLLM continuous_usage_stats): last one wins
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return chunk
    for choice in choices:  # Azure's first event has choices: []
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content, thinking = _content(delta.get("content"))
            chunk.content += content
            chunk.reasoning += (
                thinking + _text(delta.get("reasoning_content")) + _text(delta.get("reasoning"))
            )
            chunk.refusal += _text(delta.get("refusal"))
        chunk.content += _text(choice.get("text"))  # legacy /completions
        if chunk.usage is None and "usage" in choice:
            chunk.usage = token_usage(choice["usage"])  # Moonshot: usage only inside the choice
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            chunk.finish_reason = storable(reason)[:MAX_FINISH_REASON]
    if chunk.finish_reason == "error" and chunk.error is None:  # OpenRouter
        chunk.error = {"message": "the provider ended the reply with an error", "code": None}
    return chunk

"""Reading OpenAI-compatible stream chunks, with every provider variation we know of.

A chunk never crashes the reader: missing, null or oddly typed fields are read
as absent. Provider quirks are named where they are handled.
"""

from dataclasses import dataclass


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
    if isinstance(usage, dict):
        chunk.usage = usage  # cumulative forms (vLLM continuous_usage_stats): last one wins
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return chunk
    for choice in choices:  # Azure's first event has choices: []
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            chunk.content += _text(delta.get("content"))
            chunk.reasoning += _text(delta.get("reasoning_content")) + _text(delta.get("reasoning"))
            chunk.refusal += _text(delta.get("refusal"))
        chunk.content += _text(choice.get("text"))  # legacy /completions
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            chunk.finish_reason = reason
    if chunk.finish_reason == "error" and chunk.error is None:  # OpenRouter
        chunk.error = {"message": "the provider ended the reply with an error", "code": None}
    return chunk

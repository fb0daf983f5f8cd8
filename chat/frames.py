"""Every frame the server sends, built in one place (docs/protocol.md describes them).

Frames are built as text once and sent as is to every socket that should see them: a
reply's frames do not depend on who reads them. The hot path is `text_delta`: plain
reply text as `+` and the text, no JSON.
"""

import json

from chat.models import Message

FRAME_CHARS = 128 * 1024  # daphne (autobahn) will not send a websocket message over 1 MiB
TEXT_DELTA = "+"


def frame(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def text_delta(content: str) -> str:
    """The live delta of plain reply text: `+` and the text, no JSON (docs/protocol.md).

    Its reply and seq are implied: the reply the socket last got a start, resume or delta
    of, and the seq after that frame's. Every live piece reaches a socket in order right
    after its previous frame (a lagging socket is caught up with JSON deltas first), so
    the implication holds. It costs the text plus one byte on the wire (docs/benchmark.md).
    """
    return TEXT_DELTA + content


def piece_delta(message_id: int, seq: int, content: str, reasoning: str, refusal: str) -> str:
    """One live piece as a JSON `delta`: for pieces with reasoning or a refusal."""
    return frame(
        type="delta",
        message_id=message_id,
        seq=seq,
        content=content,
        **_extra("reasoning", [reasoning]),
        **_extra("refusal", [refusal]),
    )


def start_frame(turn, request_id: str | None) -> str:
    """A reply began: sent to every tab on the conversation. `request_id` is the id the
    tab that asked for it sent with its `send`, `edit` or `regenerate` (or None), so that
    tab can tell its own reply from another tab's."""
    return frame(
        type="start",
        message_id=turn.reply_id,
        user_message=turn.user_message,
        replaces=turn.replaces,
        model=turn.target.label,
        prompt_tokens=turn.prompt_tokens,
        trimmed=turn.trimmed,
        budget=turn.budget,
        replaces_user=turn.replaces_user,
        request_id=request_id,
    )


def branch_frame(message_id: int, request_id: str | None) -> str:
    """The conversation now shows the branch through version `message_id` (chat.versions):
    sent to every tab on it, which then reload the message list. `request_id` is the id the
    tab that asked sent with its `switch`."""
    return frame(type="branch", message_id=message_id, request_id=request_id)


def render_frame(message_id: int, start: int, chars: int, html: str) -> str:
    """Sanitised HTML of the reply's text from UTF-16 offset `start` up to `chars`."""
    return frame(type="render", message_id=message_id, chars=chars, html=html, **{"from": start})


def retrying_frame(message_id: int, attempt: int, delay: float, detail: str) -> str:
    return frame(
        type="retrying", message_id=message_id, attempt=attempt, delay=round(delay, 2), detail=detail
    )


def title_frame(conversation_id: int, title: str) -> str:
    """The conversation's new title (the model wrote it after the first reply): open tabs
    show it in the header, the sidebar and the window title."""
    return frame(type="title", conversation_id=conversation_id, title=title)


def error_frame(code: str, detail: str, message_id: int | None = None) -> str:
    return frame(type="error", code=code, detail=detail, message_id=message_id)


PONG = '{"type":"pong"}'


def span_frames(message_id: int, content, reasoning, refusal, start: int, end: int) -> list[str]:
    """Pieces start..end of a reply (seq start+1 … end) as frames of at most about FRAME_CHARS:
    from the start, a `resume` then deltas; otherwise deltas. A frame's seq is its last piece's."""
    frames, low, size = [], start, 0

    def cut(high: int) -> str:
        if start == 0 and not frames:
            return frame(
                type="resume",
                message_id=message_id,
                content="".join(content[:high]),
                reasoning="".join(reasoning[:high]),
                refusal="".join(refusal[:high]),
                seq=high,
            )
        return frame(
            type="delta",
            message_id=message_id,
            seq=high,
            content="".join(content[low:high]),
            **_extra("reasoning", reasoning[low:high]),
            **_extra("refusal", refusal[low:high]),
        )

    for index in range(start, end):
        piece = len(content[index]) + len(reasoning[index]) + len(refusal[index])
        if index > low and size + piece > FRAME_CHARS:
            frames.append(cut(index))
            low, size = index, 0
        size += piece
    if low < end or not frames and start == 0:
        frames.append(cut(end))
    return frames


def saved_text_frames(reply: Message) -> list[str]:
    """A saved reply's text as `resume` (+ deltas when long), cut into FRAME_CHARS pieces."""
    texts = (reply.content, reply.reasoning, reply.refusal)
    count = max(1, *(-(-len(text) // FRAME_CHARS) for text in texts))
    pieces = [[text[i * FRAME_CHARS : (i + 1) * FRAME_CHARS] for i in range(count)] for text in texts]
    return span_frames(reply.id, *pieces, 0, count)


def final_frames(reply: Message) -> list[str]:
    """The frames that show an ended reply as saved: resume (its whole text), error, done."""
    return saved_text_frames(reply) + end_frames(
        reply.id,
        status=reply.status,
        finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        ttft_ms=reply.ttft_ms,
        duration_ms=reply.duration_ms,
        usage=reply.usage,
        error=(reply.error_code, reply.error_detail) if reply.error_code else None,
    )


def end_frames(message_id: int, *, error: tuple[str, str] | None, ttft_ms, duration_ms, **done) -> list[str]:
    """How a reply's end looks on the wire, live or read back: an `error` (if it failed), `done`."""
    frames = []
    if error:
        frames.append(error_frame(error[0], error[1], message_id))
    frames.append(
        frame(
            type="done",
            message_id=message_id,
            **done,
            ttft_ms=_round(ttft_ms),
            duration_ms=_round(duration_ms),
        )
    )
    return frames


def _extra(name: str, parts: list[str]) -> dict:
    text = "".join(parts)
    return {name: text} if text else {}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)

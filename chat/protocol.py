"""Reading client frames: every rule of docs/protocol.md, with a specific error code each.

A frame that breaks a rule is answered with an `error` frame and otherwise
ignored: nothing is written and no model is called.
"""

import json
import time
from dataclasses import dataclass

from django.conf import settings

from chat.text import storable

COMMANDS = {"send", "edit", "stop", "regenerate", "ping"}
# Frames that begin a reply may carry the client's own "id", echoed as the `start` frame's
# `request_id`: how a tab tells its own reply from one another tab began with the same words.
TAGGED = {"send", "edit", "regenerate"}
MAX_REQUEST_ID_CHARS = 64


class BadFrame(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Command:
    type: str
    content: str = ""
    request_id: str | None = None


def parse(text_data: str | None, bytes_data: bytes | None) -> Command:
    if text_data is None:
        raise BadFrame(
            "bad_frame", "Send text frames holding JSON objects; binary frames are not understood."
        )
    limit = settings.CHAT_MAX_FRAME_BYTES
    # len(str) <= bytes <= 4 * len(str): only measure the encoding when it could matter.
    if len(text_data) > limit or (len(text_data) * 4 > limit and len(text_data.encode()) > limit):
        raise BadFrame("frame_too_large", f"That frame is larger than {limit:,} bytes.")
    try:
        obj = json.loads(text_data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise BadFrame("bad_json", "That frame is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise BadFrame("bad_frame", 'A frame must be a JSON object with a "type".')
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise BadFrame("bad_field", 'A frame needs a "type" string.')
    if kind not in COMMANDS:
        raise BadFrame(
            "unknown_type", f"Unknown frame type {kind[:40]!r}; expected one of {sorted(COMMANDS)}."
        )
    request_id = _request_id(obj) if kind in TAGGED else None
    if kind not in ("send", "edit"):
        return Command(kind, request_id=request_id)
    content = obj.get("content")
    if not isinstance(content, str):
        raise BadFrame("bad_field", 'A send frame needs a "content" string.')
    # JSON escapes can carry NUL and lone surrogates, which no database or socket takes.
    content = storable(content)
    if not content.strip():
        raise BadFrame("empty_content", "The message is empty.")
    maximum = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > maximum:
        raise BadFrame(
            "content_too_long", f"The message is {len(content):,} characters; the limit is {maximum:,}."
        )
    return Command(kind, content, request_id)


def _request_id(obj: dict) -> str | None:
    request_id = obj.get("id")
    if request_id is None:
        return None
    if not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS:
        raise BadFrame(
            "bad_field", f'A frame\'s "id" must be a string of at most {MAX_REQUEST_ID_CHARS} characters.'
        )
    # Echoed to every tab (and through Redis): a lone surrogate would break those sends.
    return storable(request_id)


class FrameLimiter:
    """A token bucket per socket, so one flooding socket cannot starve the others."""

    def __init__(self, rate: float | None = None, burst: int | None = None) -> None:
        self.rate = rate if rate is not None else settings.CHAT_FRAMES_PER_SECOND
        self.burst = burst if burst is not None else settings.CHAT_FRAME_BURST
        self.tokens = float(self.burst)
        self.last = time.monotonic()
        self.warned = False

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.warned = False
            return True
        return False

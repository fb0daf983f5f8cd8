"""Reading client frames: every rule of docs/protocol.md, with a specific error code each.

A frame that breaks a rule is answered with an `error` frame and otherwise
ignored: nothing is written and no model is called.
"""

import json
import time
from dataclasses import dataclass

from django.conf import settings

from chat.text import storable

COMMANDS = {"send", "edit", "stop", "regenerate", "switch", "ping"}
TAKES_AN_ID = {"send", "edit", "regenerate", "switch"}  # these may carry a request "id"
MAX_REQUEST_ID_CHARS = 64


class BadFrame(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Command:
    type: str
    content: str = ""
    request_id: str | None = None  # echoed in the `start` frame of the reply it began
    message_id: int | None = None  # the message an `edit` changes; the version a `switch` shows
    # Ids of the files a `send` or `edit` carries; None: an edit that names none, so the new
    # version keeps the edited message's files (docs/protocol.md, "Attachments").
    attachments: tuple[int, ...] | None = ()


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
    request_id = _request_id(obj) if kind in TAKES_AN_ID else None
    if kind == "switch":
        return Command(kind, request_id=request_id, message_id=_message_id(obj, required=True))
    if kind not in ("send", "edit"):
        return Command(kind, request_id=request_id)
    message_id = _message_id(obj, required=False) if kind == "edit" else None
    content = obj.get("content")
    if not isinstance(content, str):
        raise BadFrame("bad_field", 'A send frame needs a "content" string.')
    attached = None if kind == "edit" and "attachments" not in obj else _attachments(obj)
    # JSON escapes can carry NUL and lone surrogates, which no database or socket takes.
    content = storable(content)
    if not content.strip():
        if not attached:
            raise BadFrame("empty_content", "The message is empty.")
        content = ""  # files alone: nothing typed
    maximum = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > maximum:
        raise BadFrame(
            "content_too_long", f"The message is {len(content):,} characters; the limit is {maximum:,}."
        )
    return Command(kind, content, request_id, message_id, attached)


def _attachments(obj: dict) -> tuple[int, ...]:
    """The ids of uploaded files a send carries (docs/protocol.md, "Attachments")."""
    value = obj.get("attachments", [])
    if not isinstance(value, list) or any(type(v) is not int or not 0 < v < 2**63 for v in value):
        raise BadFrame("bad_field", '"attachments" must be a list of file ids (positive integers).')
    if len(set(value)) != len(value):
        raise BadFrame("bad_field", '"attachments" names a file twice.')
    limit = settings.CHAT_ATTACHMENTS_PER_MESSAGE
    if len(value) > limit:
        raise BadFrame("too_many_files", f"A message can carry {limit} files; this one has {len(value)}.")
    return tuple(value)


def _message_id(obj: dict, required: bool) -> int | None:
    value = obj.get("message_id")
    if value is None and not required:
        return None
    # bool is an int in Python, not a message id.
    if type(value) is not int or not 0 < value < 2**63:
        raise BadFrame("bad_field", '"message_id" must be a message\'s id (a positive integer).')
    return value


def _request_id(obj: dict) -> str | None:
    """The client's own id for the reply it asks for: opaque to the server, which only
    hands it back in that reply's `start` frame so the tab can tell its reply from others'."""
    request_id = obj.get("id")
    if request_id is None:
        return None
    # A lone surrogate (an escape in JSON) could not be sent back: refused, not altered,
    # since the tab matches the id exactly.
    if (
        not isinstance(request_id, str)
        or len(request_id) > MAX_REQUEST_ID_CHARS
        or storable(request_id) != request_id
    ):
        raise BadFrame("bad_field", f'"id" must be a string of at most {MAX_REQUEST_ID_CHARS} characters.')
    return request_id


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

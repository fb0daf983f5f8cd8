"""Incremental decoder for server-sent events (WHATWG "event stream interpretation").

It works on bytes and decodes UTF-8 only once a line is whole, so a read that
splits a multibyte character, a CRLF pair or a line anywhere gives the same
events as the whole stream at once. See shared SSE-CONFORMANCE.md.
"""

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str = "message"


class SSEDecoder:
    def __init__(self) -> None:
        self._partial = bytearray()  # bytes of a line whose end has not arrived yet
        self._skip_lf = False  # the last read ended in CR; an LF opening the next is its pair
        self._first_line = True
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode one network read; return the events it completed, in order."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        # Only the new bytes are searched for line ends (the partial line has none), and
        # the partial line grows in place: a long line in many small reads stays linear.
        lines = _LINE_END.split(chunk)
        if len(lines) == 1:
            self._partial += chunk
            return []
        lines[0] = bytes(self._partial) + lines[0]
        self._partial = bytearray(lines.pop())
        self._skip_lf = chunk.endswith(b"\r")
        events: list[Event] = []
        for raw in lines:
            event = self._line(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[Event]:
        """End of stream. The spec drops an event with no closing blank line; servers
        often end with `data: [DONE]` and no blank line, so that event is returned and
        the caller decides (a truncated JSON line will not parse)."""
        events = []
        if self._partial:
            event = self._line(self._partial.decode("utf-8", "replace"))
            self._partial = bytearray()
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # comment (keep-alive); the bytes already counted as activity
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "error":
            # Older llama.cpp servers wrote a bare `error: {...}` line.
            self._event = "error"
            self._data.append(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event = "\n".join(self._data), self._event or "message"
        self._data, self._event = [], ""
        if not data:
            return None  # id:/retry:-only or empty events carry nothing to parse
        return Event(data, event)

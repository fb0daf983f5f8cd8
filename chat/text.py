"""Text made storable where it enters the app: model pieces and user content.

PostgreSQL's text cannot hold NUL, and a lone UTF-16 surrogate cannot be encoded as
UTF-8 at all (not by SQLite's driver, psycopg, nor the websocket). JSON can carry
both (`"\\u0000"`, `"\\ud83d"`), so a model or a browser can send them. Let through,
one such piece failed the save of a reply, the socket it was sent to, and every other
reply checkpointed in the same transaction (issue #12). So every text is cleaned once,
here, before it is shown, stored or counted: what is streamed equals what is saved.
"""

import re

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with surrogate pairs joined, lone surrogates and NUL replaced by U+FFFD."""
    if text.isascii():  # the common case: no surrogate can be in it
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    if _UNSTORABLE.search(text) is None:
        return text
    # A pair written as two escapes is two code points in a Python str; through UTF-16
    # it becomes the one character it stands for, and a lone half becomes U+FFFD.
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined.replace("\x00", REPLACEMENT)


def _is_high_surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udbff"


class StorableStream:
    """`storable` for text that arrives in pieces, where a surrogate pair can be split
    across two pieces (two SSE events: `"\\ud83d"`, then `"\\ude00"`): a piece ending
    in a high surrogate keeps it back until the next piece says whether its pair came."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = ""

    def feed(self, text: str) -> str:
        if self.held:
            text, self.held = self.held + text, ""
        if text and _is_high_surrogate(text[-1]):
            text, self.held = text[:-1], text[-1]
        return storable(text)

    def flush(self) -> str:
        """The end of the stream: a high surrogate still held had no pair."""
        held, self.held = self.held, ""
        return REPLACEMENT if held else ""

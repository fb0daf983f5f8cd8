"""How far behind a websocket reader is, so the relay can stop feeding one that stopped reading.

Daphne applies no backpressure: a frame sent to a socket whose reader stalled
(a suspended laptop, a frozen tab) is buffered in the server's memory, without
limit. The ASGI `send` daphne hands the app is `partial(server.handle_reply,
protocol)`; `keep_raw_send` puts it in the scope, and `pending_bytes` reads the
size of the Twisted transport's write buffer from it. The relay then skips
deltas to a lagging socket and, once it drains, sends one `resume` frame with
the whole reply so far, so memory stays bounded and the reader still ends up
with the exact text. Under other ASGI servers `pending_bytes` is None and
nothing is skipped.

Sending through the raw `send` also skips channels' session wrapper, which
otherwise inspects every outgoing frame.
"""

import functools


def keep_raw_send(app):
    """ASGI middleware (outermost): remember the server's own `send` in the scope."""

    async def middleware(scope, receive, send):
        return await app(dict(scope, raw_send=send), receive, send)

    return middleware


def transport_of(send):
    """Daphne's Twisted transport behind an ASGI send, or None for other servers."""
    if isinstance(send, functools.partial) and send.args:
        return getattr(send.args[0], "transport", None)
    return None


def pending_bytes(transport) -> int | None:
    """Bytes written for this socket that the kernel has not accepted yet."""
    if transport is None:
        return None
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):  # a transport we do not know (TLS wrapper, other reactor)
        return None


class Lag:
    """One socket's place in the stream: whether its reader is so far behind that deltas are
    skipped, and when to catch it up with a single `resume` frame instead."""

    SEND, SKIP, RESUME = "send", "skip", "resume"

    def __init__(self, send, limit: int) -> None:
        self.transport = transport_of(send)
        self.limit = limit
        self.behind = False

    def next_delta(self) -> str:
        pending = pending_bytes(self.transport)
        if pending is None:
            return self.SEND
        if self.behind:
            if pending > self.limit // 4:  # hysteresis: resume once it has drained well
                return self.SKIP
            self.behind = False
            return self.RESUME
        if pending > self.limit:
            self.behind = True
            return self.SKIP
        return self.SEND

    def catch_up(self) -> bool:
        """At the end of a reply: was it behind (and so owes a resume before `done`)?"""
        behind, self.behind = self.behind, False
        return behind

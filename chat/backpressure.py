"""How far behind a websocket reader is, so the relay can stop feeding one that stopped reading.

Daphne applies no backpressure: a frame sent to a socket whose reader stalled
(a suspended laptop, a frozen tab) is buffered in the server's memory, without
limit. The ASGI `send` daphne hands the app is `partial(server.handle_reply,
protocol)`; `keep_raw_send` puts it in the scope, and `pending_bytes` reads the
size of the Twisted transport's write buffer from it. The relay then stops
sending deltas to a lagging socket and feeds it what it missed as it drains, a
bounded batch at a time (chat.consumers.ChatConsumer.catch_up), so memory stays
near the limit and the reader still ends up with the exact text. Under other
ASGI servers `pending_bytes` is None and nothing is held back.

Sending through the raw `send` also skips channels' session wrapper, which
otherwise inspects every outgoing frame.
"""

import asyncio
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
    """How far behind one socket's reader is, read from daphne's write buffer."""

    POLL = 0.05  # seconds between looks at a lagging socket's buffer

    def __init__(self, send, limit: int) -> None:
        self.transport = transport_of(send)
        self.limit = limit

    def over(self) -> bool:
        """More than `limit` bytes wait unsent: stop feeding this socket directly."""
        pending = pending_bytes(self.transport)
        return pending is not None and pending > self.limit

    async def drained(self) -> None:
        """Until at most a quarter of `limit` waits (or the socket is gone)."""
        while True:
            pending = pending_bytes(self.transport)
            if pending is None or pending <= self.limit // 4:
                return
            await asyncio.sleep(self.POLL)

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

`close_oversized_messages` makes daphne close a socket that sends a message over its
size limit with code 1009 instead of dropping the connection without a word.

Sending through the raw `send` also skips channels' session wrapper, which
otherwise inspects every outgoing frame. `DirectText` goes one step further
for the small frames of a stream: it writes the websocket frame to the socket
itself when daphne has nothing queued for it, instead of through autobahn's
framing and Twisted's add-writer / write / remove-writer round per frame.
"""

import asyncio
import functools
import logging
import struct

TEXT_FRAME = 0x81  # FIN + text opcode; a server's frames are not masked (RFC 6455, 5.1)
DIRECT_MAX_BYTES = 0xFFFF  # the most a 2-byte length holds; larger frames take daphne's path

log = logging.getLogger(__name__)
_checked = False  # close_oversized_messages looked at daphne's protocol once


def keep_raw_send(app):
    """ASGI middleware (outermost): remember the server's own `send` in the scope."""

    async def middleware(scope, receive, send):
        if scope["type"] == "websocket":
            close_oversized_messages(send)
        return await app(dict(scope, raw_send=send), receive, send)

    return middleware


def close_oversized_messages(send) -> None:
    """Make daphne answer a client message over its size limit (1 MiB by default) with a
    close frame, code 1009 "message too big", instead of dropping the TCP connection.

    autobahn fails such a connection by dropping it while `failByDrop` is set, and servers
    have it set by default: the client saw a network error with no reason and (a browser
    tab) reconnected to send the same message again. The option is set on daphne's factory
    through autobahn's public `setProtocolOptions`, for the connections it builds from now
    on; this connection copied it when it was made, before the app ran, so it is set here
    too. Runs before the handshake is accepted, so before the client can send anything.
    """
    global _checked
    protocol = protocol_of(send)
    if protocol is None:
        return  # another ASGI server: its limits are its own
    factory = getattr(protocol, "factory", None)
    if not _checked:
        _checked = True
        if not (hasattr(factory, "setProtocolOptions") and hasattr(protocol, "failByDrop")):
            log.warning(
                "daphne/autobahn without failByDrop: a message over the size limit will drop "
                "the connection instead of closing it with 1009 (tested with autobahn 26.10)"
            )
    if not hasattr(factory, "setProtocolOptions"):
        return
    if getattr(factory, "failByDrop", False):
        factory.setProtocolOptions(failByDrop=False)
    if getattr(protocol, "failByDrop", False):
        protocol.failByDrop = False


def protocol_of(send):
    """Daphne's websocket protocol (autobahn) behind an ASGI send, or None for other servers."""
    if isinstance(send, functools.partial) and send.args:
        return send.args[0]
    return None


def transport_of(send):
    """Daphne's Twisted transport behind an ASGI send, or None for other servers."""
    return getattr(protocol_of(send), "transport", None)


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


class DirectText:
    """Small text frames written straight to a daphne socket (see the module docstring).

    Per frame daphne's path costs autobahn's framing in Python plus a Twisted write:
    add the socket to epoll, wait a loop turn, send, remove it again. When nothing is
    queued for the socket (autobahn and Twisted both empty) the frame is sent at once
    here, as asyncio's own transports do; what the kernel does not take is handed to
    Twisted, behind which later frames queue in order. Anything unusual (closing, a
    compressed or fragmented message in progress, a TLS or unknown transport, a big
    frame) falls back to daphne: `send` returns False.
    """

    def __init__(self, send) -> None:
        self.protocol = protocol_of(send)
        transport = getattr(self.protocol, "transport", None)
        socket = getattr(transport, "socket", None)
        usable = (
            socket is not None
            and pending_bytes(transport) is not None
            and type(transport).__module__ == "twisted.internet.tcp"  # plain TCP, not TLS
            and hasattr(self.protocol, "send_queue")
        )
        self.transport = transport if usable else None

    def send(self, text: str) -> bool:
        transport, protocol = self.transport, self.protocol
        if transport is None:
            return False
        payload = text.encode()
        size = len(payload)
        if (
            size > DIRECT_MAX_BYTES
            or protocol.state != protocol.STATE_OPEN
            or protocol.send_state != protocol.SEND_STATE_GROUND
            or protocol._perMessageCompress is not None
            or protocol.send_queue
            or not transport.connected
            or transport.disconnecting
        ):
            return False
        if size < 126:
            data = bytes((TEXT_FRAME, size)) + payload
        else:
            data = struct.pack("!BBH", TEXT_FRAME, 126, size) + payload
        if pending_bytes(transport):
            transport.write(data)  # behind what Twisted already holds, in order
            return True
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False  # a broken connection: let daphne find out and close it its own way
        if sent < len(data):
            transport.write(data[sent:])
        return True

"""Daphne's internals, read here and nowhere else: how far behind a websocket reader is,
small text frames written straight to the socket, and a 1009 close for oversized messages.

Daphne applies no backpressure: a frame sent to a socket whose reader stalled
(a suspended laptop, a frozen tab) is buffered in the server's memory, without
limit. The ASGI `send` daphne hands the app is `partial(server.handle_reply,
protocol)`; `keep_raw_send` puts it in the scope, and `pending_bytes` reads the
size of the Twisted transport's write buffer from it. The relay then stops
sending deltas to a lagging socket and feeds it what it missed as it drains, a
bounded batch at a time (chat.relay.Watcher.catch_up), so memory stays
near the limit and the reader still ends up with the exact text. Under other
ASGI servers `pending_bytes` is None and nothing is held back.

`close_oversized_messages` makes daphne close a socket that sends a message over its
size limit with code 1009 instead of dropping the connection without a word.

Sending through the raw `send` also skips channels' session wrapper, which
otherwise inspects every outgoing frame. `DirectText` goes one step further
for the small frames of a stream: it writes the websocket frame to the socket
itself when daphne has nothing queued for it, instead of through autobahn's
framing and Twisted's add-writer / write / remove-writer round per frame
(what that saves: docs/benchmark.md). `CHAT_DIRECT_WRITES=false` turns it off.

Every private name this reads is listed in `NEEDS`, and daphne, autobahn and Twisted
are pinned in requirements.txt to the versions it was tested with. `Internals` checks
them before anything uses them: the modules and classes when the ASGI app is built
(start-up), the attributes on the first daphne websocket over plain TCP, because most
exist on no object before a connection does (autobahn sets `send_state`, `send_queue`,
`_perMessageCompress` and `failByDrop` in `_connectionMade`; Twisted sets `socket` and
`_tempDataLen` in the connection's `__init__`). If one is missing, one WARNING names it
and the versions found, and every socket from then on takes daphne's own public path
(the ASGI `send`), as under any other server; nothing raises per frame.
"""

import asyncio
import functools
import logging
import struct
import sys
from importlib import metadata

from django.conf import settings

TEXT_FRAME = 0x81  # FIN + text opcode; a server's frames are not masked (RFC 6455, 5.1)
DIRECT_MAX_BYTES = 0xFFFF  # the most a 2-byte length holds; larger frames take daphne's path

# Each use of the internals and the names it reads, on daphne's websocket protocol (an
# autobahn WebSocketServerProtocol), its Twisted TCP transport, or its factory. "direct"
# also needs everything "buffer" does.
NEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    # Lag: the bytes Twisted holds unsent for the socket (pending_bytes).
    "buffer": {"transport": ("dataBuffer", "offset", "_tempDataLen")},
    # DirectText: autobahn's send state (nothing half-sent or queued, no compression)
    # and the transport's socket.
    "direct": {
        "protocol": (
            "state",
            "STATE_OPEN",
            "send_state",
            "SEND_STATE_GROUND",
            "_perMessageCompress",
            "send_queue",
        ),
        "transport": ("socket", "connected", "disconnecting", "write"),
    },
    # close_oversized_messages: autobahn's failByDrop, on the connection and its factory.
    "close": {"protocol": ("failByDrop",), "factory": ("setProtocolOptions",)},
}
WHAT_IS_LOST = {
    "buffer": "a reader that stops reading is no longer held back (daphne buffers without limit)",
    "direct": "frames go through autobahn and Twisted (more CPU per delta)",
    "close": "a message over the size limit drops the connection instead of closing it with 1009",
}

log = logging.getLogger(__name__)


def versions() -> str:
    found = []
    for name in ("daphne", "autobahn", "Twisted"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


class Internals:
    """Which uses of daphne's internals this process may make. Checked once, then fixed for
    the life of the process: the installed libraries do not change under it."""

    def __init__(self) -> None:
        self.usable = dict.fromkeys(NEEDS, False)  # until a daphne socket has been checked
        self.missing: list[str] = []
        self.daphne = False  # daphne's classes were found (start-up)
        self.socket_checked = False
        self.protocol_class = self.tcp_class = None

    def check_classes(self) -> None:
        """At start-up: the modules and classes the rest names. daphne imports its server
        before it loads the app; if it has not, another server runs the app (or a test's
        communicator does) and there is nothing to check. (Importing daphne.server here
        would install Twisted's reactor in a process that has no use for it.)"""
        server_module = sys.modules.get("daphne.server")
        if server_module is None:
            return
        server_class = getattr(server_module, "Server", None)
        try:
            from daphne.ws_protocol import WebSocketProtocol
            from twisted.internet.tcp import Server as TCPServer
        except ImportError as exc:
            self.give_up([f"module {exc.name}"])
            return
        if not callable(getattr(server_class, "handle_reply", None)):
            self.give_up(["daphne.server.Server.handle_reply"])
            return
        self.daphne = True
        self.protocol_class, self.tcp_class = WebSocketProtocol, TCPServer

    def check_socket(self, send) -> None:
        """On the first daphne websocket over plain TCP (TLS sockets take daphne's path
        whatever this finds): every attribute in NEEDS, on the live objects."""
        if self.socket_checked or not self.daphne or not _from_daphne(send):
            return
        protocol = protocol_of(send)
        if protocol is None:
            self.socket_checked = True
            self.give_up(["daphne's send as partial(Server.handle_reply, protocol)"])
            return
        transport = getattr(protocol, "transport", None)
        if type(transport) is not self.tcp_class:
            return  # TLS, or not connected: wait for a plain TCP socket
        self.socket_checked = True
        objects = {
            "protocol": protocol,
            "transport": transport,
            "factory": getattr(protocol, "factory", None),
        }
        for use, needs in NEEDS.items():
            lacking = [
                f"{type(objects[owner]).__name__}.{name}"
                for owner, names in needs.items()
                for name in names
                if not hasattr(objects[owner], name)
            ]
            self.missing += lacking
            self.usable[use] = not lacking
        self.usable["direct"] = self.usable["direct"] and self.usable["buffer"]
        if self.missing:
            self.give_up(self.missing, keep=self.usable)
        else:
            direct = "on" if settings.CHAT_DIRECT_WRITES else "off (CHAT_DIRECT_WRITES=false)"
            log.info("daphne internals checked (%s): all present; direct writes %s", versions(), direct)

    def give_up(self, missing: list[str], keep: dict[str, bool] | None = None) -> None:
        """One warning, naming what is missing; the uses that need it stay off for good."""
        self.missing = missing
        self.usable = {use: bool(keep and keep[use]) for use in NEEDS}
        lost = "; ".join(WHAT_IS_LOST[use] for use, ok in self.usable.items() if not ok)
        log.warning(
            "daphne/autobahn/Twisted internals missing: %s (found %s; chat/backpressure.py was "
            "tested with the versions pinned in requirements.txt). Using daphne's own path: %s.",
            ", ".join(missing),
            versions(),
            lost,
        )

    def lost_on_frame(self, exc: Exception) -> None:
        """An attribute went missing after the check passed: direct writes off from now on."""
        if self.usable["direct"]:
            self.usable["direct"] = False
            self.give_up([f"{type(exc).__name__}: {exc}"], keep=self.usable)


internals = Internals()  # this process's


def _from_daphne(send) -> bool:
    """Whether `send` is daphne's own (whatever its shape), not another server's."""
    func = getattr(send, "func", send)
    return getattr(func, "__module__", "").startswith("daphne.")


def keep_raw_send(app):
    """ASGI middleware (outermost): remember the server's own `send` in the scope.

    Built once per process, when chatsite.asgi makes the app: daphne's classes are
    checked then, and the attributes on the first websocket.
    """
    internals.check_classes()

    async def middleware(scope, receive, send):
        if scope["type"] == "websocket":
            internals.check_socket(send)
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
    if not internals.usable["close"]:
        return  # another ASGI server (its limits are its own), or the check found it missing
    protocol = protocol_of(send)
    if protocol is None:
        return
    if getattr(protocol.factory, "failByDrop", False):
        protocol.factory.setProtocolOptions(failByDrop=False)
    protocol.failByDrop = False


def protocol_of(send):
    """Daphne's websocket protocol (autobahn) behind an ASGI send, or None for other servers."""
    protocol_class = internals.protocol_class
    if protocol_class is None or not isinstance(send, functools.partial) or not send.args:
        return None
    return send.args[0] if isinstance(send.args[0], protocol_class) else None


def transport_of(send):
    """Daphne's Twisted TCP transport behind an ASGI send, if its write buffer can be read."""
    transport = getattr(protocol_of(send), "transport", None)
    if internals.usable["buffer"] and type(transport) is internals.tcp_class:
        return transport
    return None


def pending_bytes(transport) -> int | None:
    """Bytes written for this socket that the kernel has not accepted yet."""
    if transport is None:
        return None
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):  # checked at start-up; a transport we do not know
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
    frame, direct writes off or their attributes missing) falls back to daphne: `send`
    returns False.
    """

    def __init__(self, send) -> None:
        # Everything that does not change per frame is decided here, once per socket.
        self.protocol = protocol_of(send)
        transport = transport_of(send)
        usable = transport is not None and internals.usable["direct"] and settings.CHAT_DIRECT_WRITES
        self.transport = transport if usable else None

    def send(self, text: str) -> bool:
        transport, protocol = self.transport, self.protocol
        if transport is None:
            return False
        try:
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
        except AttributeError as exc:  # renamed since the check (it cannot be, pinned): stop trying
            self.transport = None
            internals.lost_on_frame(exc)
            return False
        if sent < len(data):
            transport.write(data[sent:])
        return True

"""Load generators: websocket clients of the app, and direct readers of the upstream.

Both record, per stream, the time to the first delta and, for every delta the
upstream stamped, `receive time - send stamp` (both `time.monotonic_ns()`, one
clock for every process on Linux). A websocket delta may carry several pieces
coalesced; each piece is timed by its own stamp.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from bench.app import AppServer, ProcStat

STAMP = re.compile(r"<(\d+):(\d+):(\d+)>")
STAMP_BYTES = re.compile(rb"<(\d+):(\d+):(\d+)>")
now_ns = time.monotonic_ns
SELF = ProcStat(os.getpid())


def prompt(n: int, rate: float, mode: str = "stamp", pad: int = 0, first_ms: int = 0) -> str:
    return f"bench n={n} rate={rate:g} mode={mode} pad={pad} first={first_ms}"


@dataclass(slots=True)
class StreamResult:
    path: str  # "app" or "direct"
    expected: int
    sent_ns: int = 0
    start_ns: int = 0  # the app's `start` frame: the turn is saved, the reply row exists
    first_ns: int = 0
    pieces: int = 0
    latencies: list[int] = field(default_factory=list)  # ns, one per stamped piece
    lags: list[int] = field(default_factory=list)  # µs the generator wrote late, per piece
    received: list[int] = field(default_factory=list)  # receive time per piece
    frames: int = 0
    delta_frames: int = 0
    wire_bytes: int = 0  # websocket payload + frame header, server -> client
    content_bytes: int = 0
    status: str = ""
    error: str = ""
    held: int = 0  # pieces the provider sent before the app's `start` frame (see _record)

    @property
    def ttft_ns(self) -> int | None:
        return self.first_ns - self.sent_ns if self.first_ns else None

    @property
    def delivered(self) -> bool:
        return self.status == "finished" and self.pieces == self.expected


def ws_frame_size(payload_len: int) -> int:
    """Bytes of one unmasked server frame (RFC 6455 §5.2); daphne negotiates no compression."""
    if payload_len < 126:
        return payload_len + 2
    if payload_len < 65536:
        return payload_len + 4
    return payload_len + 10


# -- the app, through a minimal websocket client --------------------------------------------
class ConnectionClosed(Exception):
    """The socket closed: `code` is the close frame's code, None when none came."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed ({code if code is not None else 'no close frame'}) {reason}".strip())
        self.code = code


class HandshakeError(Exception):
    pass


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OK_CODES = (1000, 1001)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame (RFC 6455 §5.3): XOR over the whole payload at once."""
    n = len(payload)
    mask = os.urandom(4)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        key = (mask * ((n + 3) // 4))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + payload


class ReusedBuffer(asyncio.BufferedProtocol):
    """What AppSocket and DirectConn share: reads go with recv_into one growable buffer.

    asyncio's plain transports recv(256 KiB) into a fresh object every read, which
    costs ~20 µs more a read here than the read itself. `rbuf[:rlen]` holds what is
    not parsed yet; `need` is the size of the unit (frame, chunk, body) partly in it.
    """

    def __init__(self) -> None:
        self.rbuf = bytearray(1 << 16)
        self.view = memoryview(self.rbuf)
        self.rlen = 0
        self.need = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.rbuf) - self.rlen < 4096 or self.need > len(self.rbuf):
            grown = bytearray(max(2 * len(self.rbuf), self.need + 4096))
            grown[: self.rlen] = self.view[: self.rlen]
            self.rbuf, self.view = grown, memoryview(grown)
        return self.view[self.rlen :]

    def _consumed(self, i: int) -> None:
        """Drop the first `i` bytes of rbuf (a same-size slice copy: rbuf is exported)."""
        left = self.rlen - i
        if left:
            self.rbuf[:left] = self.view[i : self.rlen]
        self.rlen = left


class AppSocket(ReusedBuffer):
    """A websocket client of the app, by hand, on an asyncio.BufferedProtocol.

    Reads into a reused buffer (ReusedBuffer), then a slice and a decode per frame, so
    the clients' CPU stays out of the measured latency. `async for message in ws` yields text frames as str;
    `listen(handler)` is cheaper still (no task switch per frame). Both end on a
    close frame with code 1000/1001 and raise ConnectionClosed on any other close
    (like websockets). Reading pauses once `high` messages wait unread (`high=1`: a
    reader that stops reading reads nothing more from the kernel until it reads again).
    """

    def __init__(self, request: bytes, key: bytes, high: int) -> None:
        self.request = request
        self.accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.high = high
        self.transport: asyncio.Transport | None = None
        self.opened = asyncio.get_running_loop().create_future()
        self.messages: deque[str] = deque()
        self.handler = None  # listen(): called with each message, straight from buffer_updated
        self.listening: asyncio.Future | None = None
        self.waiter: asyncio.Future | None = None
        super().__init__()
        self.fragments: list[bytes] = []
        self.handshaking = True
        self.paused = False
        self.close_code: int | None = None
        self.close_received = False
        self.closing = False
        self.lost = asyncio.get_running_loop().create_future()

    # -- protocol callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def buffer_updated(self, nbytes: int) -> None:
        self.rlen += nbytes
        if self.handshaking:
            end = self.rbuf.find(b"\r\n\r\n", 0, self.rlen)
            if end < 0:
                return
            head = bytes(self.view[:end])
            self._consumed(end + 4)
            self.handshaking = False
            self._check_handshake(head)
            if self.opened.done() and self.opened.exception():  # refused
                return
        if self.rlen:
            self._frames()

    def _check_handshake(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"101":
            self.opened.set_exception(
                HandshakeError(f"websocket handshake refused: {lines[0].decode(errors='replace')}")
            )
            self.transport.close()
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != self.accept:
            self.opened.set_exception(HandshakeError("websocket handshake: bad Sec-WebSocket-Accept"))
            self.transport.close()
            return
        self.opened.set_result(None)

    def _frames(self) -> None:
        data, view, size = self.rbuf, self.view, self.rlen
        i = 0
        queued = False
        self.need = 0
        while size - i >= 2:
            b0 = data[i]
            length = data[i + 1]
            start = i + 2
            if length & 0x80:  # servers never mask (RFC 6455 §5.1)
                self._fail("masked server frame")
                return
            if length == 126:
                if size - i < 4:
                    break
                length = int.from_bytes(view[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - i < 10:
                    break
                length = int.from_bytes(view[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                self.need = end - i
                break
            i = end
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 0:
                if b0 & 0x80 and not self.fragments:
                    if self.closing:
                        continue
                    message = str(view[start:end], "utf-8")
                else:
                    self.fragments.append(bytes(view[start:end]))
                    if not b0 & 0x80:
                        continue
                    payload = b"".join(self.fragments)
                    self.fragments = []
                    if self.closing:
                        continue
                    message = payload.decode()
                if self.handler is not None:
                    self._handle(message)
                else:
                    self.messages.append(message)
                    queued = True
            elif opcode == 8:
                payload = bytes(view[start:end])
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_received = True
                self.rlen = 0
                if not self.closing:  # echo it (RFC 6455 §5.5.1)
                    self.closing = True
                    self.transport.write(_client_frame(8, payload[:2]))
                self.transport.close()
                self._wake()
                return
            elif opcode == 9:
                self.transport.write(_client_frame(10, bytes(view[start:end])))
            elif opcode == 2:
                self._fail("binary frame")
                return
            # 10 (pong): nothing to do
        self._consumed(i)
        if queued:
            self._wake()
            if len(self.messages) >= self.high and not self.paused:
                self.paused = True
                self.transport.pause_reading()

    def _handle(self, message: str) -> None:
        if self.listening.done():  # cancelled (a timeout), listen() has not returned yet
            self.messages.append(message)
            return
        try:
            finished = self.handler(message)
        except Exception as exc:  # noqa: BLE001 - raised in listen()
            self.handler = None
            self.listening.set_exception(exc)
            return
        if finished:
            self.handler = None
            self.listening.set_result(None)

    def _fail(self, why: str) -> None:
        self.close_code = 1002
        self.close_received = True
        self.transport.abort()
        self._wake(ConnectionClosed(1002, why))

    def _wake(self, exc: BaseException | None = None) -> None:
        listening = self.listening
        if listening is not None and not listening.done():
            self.handler = None
            listening.set_exception(exc or self._ended())
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(f"websocket handshake: connection lost ({exc})"))
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake()

    # -- the API the scenarios use (a subset of websockets')
    def __aiter__(self) -> AppSocket:
        return self

    async def __anext__(self) -> str:
        while True:
            messages = self.messages
            if messages:
                message = messages.popleft()
                if self.paused and not messages:
                    self.paused = False
                    self.transport.resume_reading()
                return message
            if self.close_received or self.lost.done():
                raise self._ended()
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    def _ended(self) -> BaseException:
        if self.close_received and self.close_code in _OK_CODES:
            return StopAsyncIteration()
        return ConnectionClosed(self.close_code if self.close_received else None)

    async def listen(self, handler) -> None:
        """Call `handler(message)` for each message until it returns true; cheaper than
        `async for` (no task switch per frame, and the receive time is taken in
        data_received). Ends like `async for`: returns on a 1000/1001 close, raises
        ConnectionClosed on any other; raises what the handler raises."""
        while self.messages:
            message = self.messages.popleft()
            if self.paused and not self.messages:
                self.paused = False
                self.transport.resume_reading()
            if handler(message):
                return
        if self.close_received or self.lost.done():
            exc = self._ended()
            if isinstance(exc, StopAsyncIteration):
                return
            raise exc
        self.listening = asyncio.get_running_loop().create_future()
        self.handler = handler
        try:
            await self.listening
        except StopAsyncIteration:
            return
        finally:
            self.handler = self.listening = None

    async def send(self, text: str) -> None:
        if self.closing or self.lost.done():
            raise ConnectionClosed(self.close_code if self.close_received else None)
        self.transport.write(_client_frame(1, text.encode()))

    async def close(self) -> None:
        """Send a close frame (1000), wait a little for the server's, drop the connection."""
        if self.transport is None or self.lost.done():
            return
        self.messages.clear()
        if not self.closing:
            self.closing = True
            self.transport.write(_client_frame(8, (1000).to_bytes(2, "big")))
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        try:
            async with asyncio.timeout(5):  # what websockets' close_timeout was
                await asyncio.shield(self.lost)
        except TimeoutError:
            self.transport.abort()


async def open_socket(app: AppServer, conversation_id: int, *, small_buffer: bool = False) -> AppSocket:
    loop = asyncio.get_running_loop()
    url = urlsplit(f"{app.ws_base}{conversation_id}/")
    host, port = url.hostname, url.port
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Origin: {app.origin}\r\nCookie: sessionid={app.session}\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    ws = AppSocket(request, key, high=1 if small_buffer else 1024)
    async with asyncio.timeout(60):
        if small_buffer:
            # A client that stops reading: a tiny receive buffer (no autotuning), and
            # AppSocket stops reading the socket once one frame is queued unread.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (host, port))
                await loop.create_connection(lambda: ws, sock=sock)
            except BaseException:
                sock.close()
                raise
        else:
            await loop.create_connection(lambda: ws, host, port)
        await ws.opened
        if not small_buffer:
            # Ready, as a browser's socket is by the time its user sends: the server has
            # finished setting it up (watching the conversation takes a database read), which
            # a pong proves. A send right after the handshake queued behind that set-up, and
            # the TTFT figures counted ~0.25 ms of opening the socket, not of the send.
            await ws.send('{"type":"ping"}')
            await ws.listen(lambda message: json.loads(message).get("type") == "pong")
    return ws


async def open_sockets(app: AppServer, ids: list[int], concurrency: int = 32) -> list[AppSocket]:
    gate = asyncio.Semaphore(concurrency)

    async def one(conversation_id: int) -> AppSocket:
        async with gate:
            return await open_socket(app, conversation_id)

    return list(await asyncio.gather(*(one(i) for i in ids)))


async def close_sockets(sockets: list[AppSocket], concurrency: int = 64) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(ws: AppSocket) -> None:
        async with gate:
            try:
                await ws.close()
            except (ConnectionClosed, OSError):
                pass

    await asyncio.gather(*(one(ws) for ws in sockets))


async def app_stream(
    ws: AppSocket, text: str, expected: int, *, delay: float, limit_s: float, count_bytes: bool = False
) -> StreamResult:
    result = StreamResult("app", expected)

    def on_message(message: str) -> bool:
        """One frame, timed when it is read; true at `done`."""
        now = now_ns()
        result.frames += 1
        if count_bytes:
            result.wire_bytes += ws_frame_size(len(message.encode()))
        text_delta = message.startswith("+")  # `+` and the text (docs/protocol.md)
        if text_delta or message.startswith('{"type":"delta"'):
            result.delta_frames += 1
            if not result.first_ns:
                result.first_ns = now
            if count_bytes:
                content = message[1:] if text_delta else json.loads(message).get("content", "")
                result.content_bytes += len(content.encode())
            _record(result, STAMP.findall(message), now)
            return False
        frame = json.loads(message)
        if frame["type"] == "start":
            result.start_ns = now
        elif frame["type"] == "done":
            result.status = frame["status"]
            return True
        elif frame["type"] == "error":
            result.error = frame["code"]
        return False

    if delay:
        await asyncio.sleep(delay)
    result.sent_ns = now_ns()
    try:
        async with asyncio.timeout(limit_s):
            await ws.send(json.dumps({"type": "send", "content": text}))
            await ws.listen(on_message)
    except TimeoutError:
        result.error = result.error or "timeout"
    except ConnectionClosed as exc:
        result.error = result.error or f"closed ({exc.code if exc.code is not None else 'no close frame'})"
    return result


def _record(result: StreamResult, stamps, now: int) -> None:
    """Each piece's latency. A piece the provider sent before the `start` frame came (its
    request goes out while the turn is saved, chat.early) could not be shown before the
    message was saved: it counts from the `start` frame, and is counted as held (what it
    waited is in the TTFT rows)."""
    for _seq, sent, lag in stamps:
        sent = int(sent)
        if result.start_ns and sent < result.start_ns:
            sent = result.start_ns
            result.held += 1
        result.latencies.append(now - sent)
        result.lags.append(int(lag))
        result.received.append(now)
    result.pieces += len(stamps)


# -- the upstream, straight --------------------------------------------------------------------
class DirectConn(ReusedBuffer):
    """One keep-alive HTTP/1.1 connection to the upstream, read like AppSocket reads.

    A reused buffer (ReusedBuffer), and the response parsed straight from the read
    callback: status line and headers, then the body, chunked (each chunk once it is
    whole in the buffer, like a websocket frame), by content-length, or to EOF. Each
    chunk's stamps are timed when that chunk is decoded, in buffer_updated, the way
    AppSocket times each frame: so both sides pay the same kind of client per read.
    """

    HEAD, CHUNKED, LENGTH, TO_EOF = range(4)

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self.result: StreamResult | None = None  # the response being read
        self.done: asyncio.Future | None = None
        self.state = self.HEAD
        self.length = 0  # content-length, state LENGTH
        self.tail = b""  # what may hold the start of a stamp split between chunks
        self.lost = False
        self.broken = False  # not reusable: bytes out of turn, a bad response, a cancelled read

    def connection_made(self, transport) -> None:
        self.transport = transport

    def usable(self) -> bool:
        return not (self.lost or self.broken or self.transport.is_closing())

    async def exchange(self, request: bytes, result: StreamResult) -> None:
        """Send one request; return once its response has been read (or the peer hung up).
        Raises the OSError the connection died of, if any."""
        self.result, self.state, self.tail = result, self.HEAD, b""
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            await self.done
        finally:
            if self.result is not None:  # cancelled (timeout) or lost mid-response
                self.result = None
                self.broken = True

    def buffer_updated(self, nbytes: int) -> None:
        self.rlen += nbytes
        result = self.result
        if result is None:  # nothing was asked: the peer spoke out of turn
            self.broken = True
            self.rlen = 0
            self.transport.close()
            return
        data, view, size = self.rbuf, self.view, self.rlen
        i = 0
        self.need = 0
        if self.state == self.HEAD:
            end = data.find(b"\r\n\r\n", 0, size)
            if end < 0:
                return
            if not self._head(bytes(view[:end])):
                return
            i = end + 4
        if self.state == self.CHUNKED:
            while True:
                eol = data.find(b"\r\n", i, size)
                if eol < 0:
                    break
                try:
                    n = int(bytes(view[i:eol]).split(b";", 1)[0], 16)
                except ValueError:
                    self._fail("bad chunk size")
                    return
                if n == 0:  # the last chunk, then trailers up to an empty line
                    end = data.find(b"\r\n\r\n", eol, size)
                    if end < 0:
                        break
                    self._complete(end + 4)
                    return
                start = eol + 2
                end = start + n
                if end + 2 > size:
                    self.need = end + 2 - i
                    break
                if data[end : end + 2] != b"\r\n":
                    self._fail("bad chunk end")
                    return
                now = now_ns()
                self.tail = _scan(result, self.tail + view[start:end], now)
                i = end + 2
        elif self.state == self.LENGTH:
            if size - i < self.length:
                self.need = self.length
            else:
                now = now_ns()
                _scan(result, bytes(view[i : i + self.length]), now)
                self._complete(i + self.length)
                return
        elif self.state == self.TO_EOF and size > i:
            now = now_ns()
            self.tail = _scan(result, self.tail + view[i:size], now)
            i = size
        self._consumed(i)

    def _head(self, head: bytes) -> bool:
        """Parse the status line and headers; false if the response is unreadable."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            self._fail("bad status line")
            return False
        if parts[1] != b"200":
            self.result.error = f"HTTP {parts[1].decode(errors='replace')}"
        chunked, length = False, None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self._fail("bad content-length")
                    return False
        if chunked:
            self.state = self.CHUNKED
        elif length is not None:
            self.state, self.length = self.LENGTH, length
        else:
            self.state, self.broken = self.TO_EOF, True
        return True

    def _complete(self, i: int) -> None:
        self._consumed(i)
        if self.rlen:  # bytes past the response: nothing was asked for them
            self.broken = True
        self.result = None
        self.need = 0
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, why: str) -> None:
        self.result.error = f"protocol: {why}"
        self.broken = True
        self.rlen = 0
        self.transport.abort()
        self.result = None
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.result is None or self.done is None or self.done.done():
            return
        if exc is None and self.state == self.TO_EOF:  # EOF ends such a response
            self._complete(self.rlen)
        elif exc is None:  # hung up mid-response: left incomplete, as a short read would be
            self.result = None
            self.done.set_result(None)
        else:
            self.result = None
            self.done.set_exception(exc if isinstance(exc, OSError) else ConnectionResetError(str(exc)))


class DirectPool:
    """Keep-alive HTTP/1.1 connections to the upstream, spoken by hand (DirectConn).

    The baseline should cost as little as possible, so that "added" is what the app
    adds, and be read the same way the app's websockets are (AppSocket), so that the
    clients' own cost cancels out. httpx costs about 1 ms per request here, and its
    pool grows slower with every concurrent stream (100 concurrent streams: ~300 ms to
    the first delta against ~3 ms by hand); `--baseline httpx` uses it anyway.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[DirectConn] = []

    async def take(self) -> DirectConn:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable():
                return conn
            conn.transport.close()
        _, conn = await asyncio.get_running_loop().create_connection(DirectConn, "127.0.0.1", self.port)
        return conn

    def give(self, conn: DirectConn) -> None:
        if conn.usable():
            self.idle.append(conn)
        else:
            conn.transport.close()

    async def aclose(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()


def _request_body(text: str) -> bytes:
    return json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


async def direct_stream(
    pool: DirectPool, text: str, expected: int, *, delay: float, limit_s: float
) -> StreamResult:
    """The same request the app makes, read straight off the socket."""
    result = StreamResult("direct", expected)
    body = _request_body(text)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"accept: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body)
    ) + body
    if delay:
        await asyncio.sleep(delay)
    result.sent_ns = now_ns()
    conn = None
    try:
        async with asyncio.timeout(limit_s):
            conn = await pool.take()
            await conn.exchange(request, result)
    except TimeoutError:
        result.error = "timeout"
    except OSError as exc:
        result.error = type(exc).__name__
    if conn is not None:
        pool.give(conn)
    return result


def _scan(result: StreamResult, buf: bytes, now: int) -> bytes:
    """Record the stamps in `buf`; return what may hold the start of a split stamp."""
    end = 0
    stamps = []
    for match in STAMP_BYTES.finditer(buf):
        stamps.append(match.groups())
        end = match.end()
    if stamps and not result.first_ns:
        result.first_ns = now
    _record(result, stamps, now)
    if b"data: [DONE]" in buf:
        result.status = "finished"
    return buf[end:][-64:]


def httpx_client(streams: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=streams + 16, max_keepalive_connections=streams + 16),
    )


async def httpx_stream(
    client: httpx.AsyncClient, base_url: str, text: str, expected: int, *, delay: float, limit_s: float
) -> StreamResult:
    """The baseline read with httpx, as the issue first suggested (see DirectPool)."""
    result = StreamResult("direct", expected)
    body = _request_body(text)
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if delay:
        await asyncio.sleep(delay)
    result.sent_ns = now_ns()
    try:
        async with asyncio.timeout(limit_s):
            async with client.stream(
                "POST", f"{base_url}/chat/completions", content=body, headers=headers
            ) as response:
                tail = b""
                async for data in response.aiter_raw():
                    tail = _scan(result, tail + data, now_ns())
    except TimeoutError:
        result.error = "timeout"
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    return result


# -- rounds --------------------------------------------------------------------------------------
class Sampler:
    """CPU and RSS of the processes every 0.2 s while a round runs."""

    def __init__(self, procs: dict[str, ProcStat], interval: float = 0.2) -> None:
        self.procs = procs
        self.interval = interval
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None

    def take(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        sample = {
            "t": now_ns(),
            "clients_cpu": usage.ru_utime + usage.ru_stime,
            "clients_wait": SELF.wait_seconds(),
        }
        for name, proc in self.procs.items():
            try:
                sample[f"{name}_cpu"] = proc.cpu_seconds()
                sample[f"{name}_rss"] = proc.rss_bytes()
                sample[f"{name}_wait"] = proc.wait_seconds()
            except OSError:
                pass
        return sample

    async def _run(self) -> None:
        while True:
            self.samples.append(self.take())
            await asyncio.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()
        self.samples.append(self.take())


@dataclass
class Round:
    path: str
    streams: list[StreamResult]
    started_ns: int
    ended_ns: int
    samples: list[dict]

    def window(self, start_s: float, end_s: float) -> tuple[dict, dict] | None:
        """The first and last samples inside [start + start_s, start + end_s]."""
        lo, hi = self.started_ns + int(start_s * 1e9), self.started_ns + int(end_s * 1e9)
        inside = [s for s in self.samples if lo <= s["t"] <= hi]
        return (inside[0], inside[-1]) if len(inside) >= 2 else None

    def pieces_between(self, t0: int, t1: int) -> int:
        return sum(1 for s in self.streams for t in s.received if t0 <= t <= t1)


async def app_round(
    app: AppServer,
    procs: dict[str, ProcStat],
    *,
    streams: int,
    n: int,
    rate: float,
    spread: float,
    limit_s: float,
    mode: str = "stamp",
    pad: int = 0,
    count_bytes: bool = False,
    first_ms: int = 0,
) -> Round:
    """`streams` sockets, each on a fresh conversation, connected first; then each sends
    one message, the starts spread evenly over `spread` seconds (0: all at once)."""
    sockets = await open_sockets(app, app.take_conversations(streams))
    text = prompt(n, rate, mode, pad, first_ms)
    try:
        with Sampler(procs) as sampler:
            started = now_ns()
            results = await asyncio.gather(
                *(
                    app_stream(
                        ws, text, n, delay=spread * i / streams, limit_s=limit_s, count_bytes=count_bytes
                    )
                    for i, ws in enumerate(sockets)
                )
            )
            ended = now_ns()
    finally:
        await close_sockets(sockets)
    return Round("app", list(results), started, ended, sampler.samples)


async def direct_round(
    reader,
    procs: dict[str, ProcStat],
    *,
    streams: int,
    n: int,
    rate: float,
    spread: float,
    limit_s: float,
    first_ms: int = 0,
) -> Round:
    """`reader(text, n, delay=..., limit_s=...)` reads one stream straight from the upstream."""
    text = prompt(n, rate, first_ms=first_ms)
    with Sampler(procs) as sampler:
        started = now_ns()
        results = await asyncio.gather(
            *(reader(text, n, delay=spread * i / streams, limit_s=limit_s) for i in range(streams))
        )
        ended = now_ns()
    return Round("direct", list(results), started, ended, sampler.samples)

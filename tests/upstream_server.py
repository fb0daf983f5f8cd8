"""A real OpenAI-compatible upstream on loopback, replaying bytes a test chooses.

It is an HTTP/1.1 server on 127.0.0.1 (ephemeral port) with its own thread and
asyncio loop, so sync tests, async tests (any loop) and subprocesses (via
`base_url`) can all talk to it. Replies are queued in order, one per request;
each body piece is a separate chunk of a chunked response, flushed on its own,
so a test decides exactly where the client's network reads split.

    with UpstreamServer() as upstream:
        upstream.queue(Reply(body=sse(*chat_chunks(["Hel", "lo"]))))
        ... point the client at upstream.base_url ...
        assert upstream.requests[0]["json"]["stream"] is True

Each recorded request is a dict: method, path, headers (lower-case names), json
(the parsed body or None), body (raw bytes), connection (which TCP connection
carried it, numbered from 1) and disconnected (a threading.Event
set when the client hung up before the reply was fully written, e.g. on stop).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus

__all__ = ["Reply", "UpstreamServer", "chat_chunks", "held_reply", "sse"]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    # Written as separate chunks (chunked transfer encoding), each flushed. With a
    # `content-length` header the pieces are written raw instead (no chunk framing).
    body: list[bytes] = field(default_factory=list)
    delay: float = 0.0  # sleep before each body piece
    stall: float = 0.0  # after the pieces, stay open silently this long (then end normally unless cut)
    cut: bool = False  # after the pieces (and stall), drop the socket without the terminating 0-chunk
    wait_for: threading.Event | None = None  # block before every piece after the first until set
    # After the pieces, write this again and again (every `delay`, at least 10 ms) until the
    # client hangs up: e.g. keep-alive comments that never end.
    repeat: bytes = b""
    written: threading.Event | None = None  # set once the whole reply is written (or cut)


def _error_reply(message: str) -> Reply:
    body = json.dumps({"error": {"message": message, "type": "server_error", "code": None}}).encode()
    return Reply(status=500, headers={"content-type": "application/json"}, body=[body])


class UpstreamServer:
    def __init__(self, default: Reply | None = None) -> None:
        self.default = default
        self.requests: list[dict] = []
        self._replies: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._closing = False
        self._connections: set[asyncio.Task] = set()
        self.connections_opened = 0  # TCP connections accepted so far (keep-alive reuse shows here)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream-server", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the loopback upstream server did not start")
        if self._startup_error is not None:
            raise self._startup_error
        self.port: int = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    # -- public API ------------------------------------------------------------
    def queue(self, *replies: Reply) -> None:
        """Replies are served in order, one per request; then `default` (None: a 500)."""
        with self._lock:
            self._replies.extend(replies)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> UpstreamServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- server thread ---------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._startup_error: BaseException | None = None
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, limit=2**20)
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._startup_error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5)
        await self._server.wait_closed()

    def _next_reply(self) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        if self.default is not None:
            return self.default
        return _error_reply("no reply was queued for this request")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        self.connections_opened += 1
        connection = self.connections_opened
        try:
            while not self._closing:
                request = await self._read_request(reader)
                if request is None:
                    break
                request["connection"] = connection
                self.requests.append(request)
                keep_open = await self._reply_while_watching(reader, writer, self._next_reply(), request)
                if not keep_open or request["headers"].get("connection", "").lower() == "close":
                    break
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _reply_while_watching(self, reader, writer, reply: Reply, request: dict) -> bool:
        """Write the reply; stop early, setting request["disconnected"], if the client leaves."""
        writing = asyncio.ensure_future(self._write_reply(writer, reply))
        watching = asyncio.ensure_future(self._client_gone(reader))
        try:
            await asyncio.wait({writing, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not writing.done():
                writing.cancel()
                request["disconnected"].set()
        try:
            return await writing
        except (asyncio.CancelledError, ConnectionError):
            request["disconnected"].set()
            return False

    async def _client_gone(self, reader: asyncio.StreamReader) -> None:
        # No read here: a byte consumed would belong to the client's next request.
        while not reader.at_eof():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _read_request(self, reader: asyncio.StreamReader) -> dict | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return {
            "method": method,
            "path": path,
            "headers": headers,
            "json": parsed,
            "body": body,
            # Set when the client closed the connection before the reply was fully written.
            "disconnected": threading.Event(),
        }

    async def _write_reply(self, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        """Write one response; False when the connection must not be reused."""
        headers = {name.lower(): value for name, value in reply.headers.items()}
        chunked = "content-length" not in headers
        if chunked:
            headers["transfer-encoding"] = "chunked"
        try:
            reason = HTTPStatus(reply.status).phrase
        except ValueError:
            reason = "Status"
        head = f"HTTP/1.1 {reply.status} {reason}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1"))
        await writer.drain()
        for index, piece in enumerate(reply.body):
            if isinstance(piece, str):
                piece = piece.encode()
            if index and reply.wait_for is not None:
                # A threading.Event cannot be awaited; polling keeps close() able to cancel.
                while not reply.wait_for.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if not piece:
                continue  # a zero-length chunk would end the body
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        while reply.repeat:
            await asyncio.sleep(max(reply.delay, 0.01))
            writer.write(b"%x\r\n%s\r\n" % (len(reply.repeat), reply.repeat) if chunked else reply.repeat)
            await writer.drain()
        if reply.stall:
            await asyncio.sleep(reply.stall)
        if reply.cut:
            writer.transport.abort()
            if reply.written is not None:
                reply.written.set()
            return False
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        if reply.written is not None:
            reply.written.set()
        return True


def sse(*chunks: dict | str, done: bool = True) -> list[bytes]:
    """One SSE event per dict (`data: <json>` and a blank line); a str is written as is."""
    out = [
        (chunk if isinstance(chunk, str) else f"data: {json.dumps(chunk)}\n\n").encode() for chunk in chunks
    ]
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


def chat_chunks(
    text_pieces: list[str],
    finish_reason: str | None = "stop",
    model: str = "test-model",
    usage: dict | None = None,
) -> list[dict]:
    """OpenAI-shaped chunks: role chunk, one per text piece, finish chunk, then the
    usage chunk (choices: []) when `usage` is given."""
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

    def chunk(delta: dict, reason: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in text_pieces]
    if finish_reason is not None:
        out.append(chunk({}, finish_reason))
    if usage is not None:
        out.append({**base, "choices": [], "usage": usage})
    return out


def held_reply(first: list[str], rest: list[str], **kwargs) -> tuple[Reply, threading.Event]:
    """A stream that sends `first` at once, then waits for the event before `rest` and the end."""
    release = threading.Event()
    events = sse(*chat_chunks(first + rest, **kwargs))
    head = b"".join(events[: 1 + len(first)])
    return Reply(body=[head, *events[1 + len(first) :]], wait_for=release), release

"""Load generators: websocket clients of the app, and direct readers of the upstream.

Both record, per stream, the time to the first delta and, for every delta the
upstream stamped, `receive time - send stamp` (both `time.monotonic_ns()`, one
clock for every process on Linux). A websocket delta may carry several pieces
coalesced; each piece is timed by its own stamp.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import time
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from bench.app import AppServer, ProcStat

STAMP = re.compile(r"<(\d+):(\d+):(\d+)>")
STAMP_BYTES = re.compile(rb"<(\d+):(\d+):(\d+)>")
now_ns = time.monotonic_ns
SELF = ProcStat(os.getpid())


def prompt(n: int, rate: float, mode: str = "stamp", pad: int = 0) -> str:
    return f"bench n={n} rate={rate:g} mode={mode} pad={pad}"


@dataclass(slots=True)
class StreamResult:
    path: str  # "app" or "direct"
    expected: int
    sent_ns: int = 0
    start_ns: int = 0  # the app's `start` frame: the reply row exists, the model is being called
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


# -- the app, through websockets -------------------------------------------------------------
async def open_socket(
    app: AppServer, conversation_id: int, *, small_buffer: bool = False
) -> ClientConnection:
    sock = None
    if small_buffer:
        # A client that stops reading: a tiny receive buffer (no autotuning), and
        # websockets stops reading the socket once one frame is queued unread.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.port))
    return await connect(
        f"{app.ws_base}{conversation_id}/",
        origin=app.origin,
        additional_headers={"Cookie": f"sessionid={app.session}"},
        compression=None,
        max_size=None,
        max_queue=1 if small_buffer else 64,
        ping_interval=None,
        open_timeout=60,
        close_timeout=5,
        sock=sock,
    )


async def open_sockets(app: AppServer, ids: list[int], concurrency: int = 32) -> list[ClientConnection]:
    gate = asyncio.Semaphore(concurrency)

    async def one(conversation_id: int) -> ClientConnection:
        async with gate:
            return await open_socket(app, conversation_id)

    return list(await asyncio.gather(*(one(i) for i in ids)))


async def close_sockets(sockets: list[ClientConnection], concurrency: int = 64) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            try:
                await ws.close()
            except (WebSocketException, OSError):
                pass

    await asyncio.gather(*(one(ws) for ws in sockets))


async def app_stream(
    ws: ClientConnection, text: str, expected: int, *, delay: float, limit_s: float, count_bytes: bool = False
) -> StreamResult:
    result = StreamResult("app", expected)
    if delay:
        await asyncio.sleep(delay)
    result.sent_ns = now_ns()
    try:
        async with asyncio.timeout(limit_s):
            await ws.send(json.dumps({"type": "send", "content": text}))
            async for message in ws:
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
                    continue
                frame = json.loads(message)
                if frame["type"] == "start":
                    result.start_ns = now
                elif frame["type"] == "done":
                    result.status = frame["status"]
                    break
                elif frame["type"] == "error":
                    result.error = frame["code"]
    except TimeoutError:
        result.error = result.error or "timeout"
    except ConnectionClosed as exc:
        result.error = result.error or f"closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
    return result


def _record(result: StreamResult, stamps, now: int) -> None:
    for _seq, sent, lag in stamps:
        result.latencies.append(now - int(sent))
        result.lags.append(int(lag))
        result.received.append(now)
    result.pieces += len(stamps)


# -- the upstream, straight --------------------------------------------------------------------
class DirectPool:
    """Keep-alive HTTP/1.1 connections to the upstream, spoken by hand.

    The baseline should cost as little as possible, so that "added" is what the app
    adds. httpx costs about 1 ms per request here, and its pool grows slower with
    every concurrent stream (100 concurrent streams: ~300 ms to the first delta
    against ~3 ms by hand); `--baseline httpx` uses it anyway.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer = self.idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
        return await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22)

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
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
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"accept: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    if delay:
        await asyncio.sleep(delay)
    result.sent_ns = now_ns()
    reusable = False
    writer = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await pool.take()
            writer.write(head + body)
            tail = b""
            while True:
                data = await reader.read(1 << 20)
                now = now_ns()
                if not data:
                    break
                tail = _scan(result, tail + data, now)
                if result.status and data.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
                    reusable = True
                    break
    except TimeoutError:
        result.error = "timeout"
    except OSError as exc:
        result.error = type(exc).__name__
    if writer is not None:
        if reusable:
            pool.idle.append((reader, writer))
        else:
            writer.close()
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
) -> Round:
    """`streams` sockets, each on a fresh conversation, connected first; then each sends
    one message, the starts spread evenly over `spread` seconds (0: all at once)."""
    sockets = await open_sockets(app, app.take_conversations(streams))
    text = prompt(n, rate, mode, pad)
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
) -> Round:
    """`reader(text, n, delay=..., limit_s=...)` reads one stream straight from the upstream."""
    text = prompt(n, rate)
    with Sampler(procs) as sampler:
        started = now_ns()
        results = await asyncio.gather(
            *(reader(text, n, delay=spread * i / streams, limit_s=limit_s) for i in range(streams))
        )
        ended = now_ns()
    return Round("direct", list(results), started, ended, sampler.samples)

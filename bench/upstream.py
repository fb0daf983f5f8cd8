"""A loopback OpenAI-compatible upstream that streams timed, stamped deltas.

Run as its own process (`python -m bench.upstream`): it prints `PORT <n>` once
listening on 127.0.0.1. Each request's last message says what to stream, e.g.
`bench n=300 rate=50 mode=stamp pad=0`:

- `n` deltas, the first at once, then on an absolute schedule of `rate` a second
  (so a late tick does not shift the rest);
- `mode=stamp`: each delta's content is `<seq:sent_ns:lag_us>`, where `sent_ns`
  is `time.monotonic_ns()` just before the write (CLOCK_MONOTONIC is system-wide
  on Linux, so another process can subtract it from its own receive time) and
  `lag_us` how late the write was against its schedule (the generator's own lag);
  `mode=words`: realistic English tokens of about 4 characters, for byte counts;
- `pad`: that many extra bytes per delta (for the slow-reader memory test);
- `first`: milliseconds the "model" thinks before its first delta (a real provider's
  time to first token); the response headers and the role chunk still go out at once.

One scheduler wakes every millisecond and writes every delta that is due, so
thousands of concurrent streams cost one timer, not one timer each.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import re
import signal
import sys
import time

_PARAM = re.compile(r"\b(n|rate|pad|mode|first)=(\w+)")
WORDS = (
    " the quick brown fox jumps over the lazy dog and then it runs across a wide green field"
    " while the sun sets slowly behind distant hills , painting everything in shades of gold"
).split(" ")
# Padding is words, not one long run of a letter: tiktoken counts the final reply, and
# BPE over a megabyte-long "word" is quadratic.
PAD = " lorem ipsum dolor sit amet" * 40_000
HEAD = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"bench-model","choices":[{"index":0,"delta":'
)
TAIL = ',"logprobs":null,"finish_reason":null}]}\n\n'
FINISH = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"bench-model","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
)


def _chunk(text: str) -> bytes:
    data = text.encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


def _usage(n: int) -> str:
    usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
    return (
        'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
        f'"model":"bench-model","choices":[],"usage":{json.dumps(usage)}}}\n\n'
    )


class Stream:
    __slots__ = ("writer", "n", "rate", "pad", "mode", "seq", "t0", "done")

    def __init__(self, writer, n: int, rate: float, pad: int, mode: str, first_ms: int = 0) -> None:
        self.writer = writer
        self.n, self.rate, self.pad, self.mode = n, rate, pad, mode
        self.seq = 0
        self.t0 = time.monotonic_ns() + first_ms * 1_000_000
        self.done = asyncio.get_running_loop().create_future()

    def due_ns(self) -> int:
        return self.t0 + int(self.seq * 1e9 / self.rate)

    def content(self, now_ns: int) -> str:
        if self.mode == "words":
            return WORDS[self.seq % len(WORDS)] + PAD[: self.pad]
        lag_us = max(0, (now_ns - self.due_ns()) // 1000)
        return f"<{self.seq}:{now_ns}:{lag_us}>" + PAD[: self.pad]


class Scheduler:
    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Stream]] = []
        self.counter = itertools.count()
        self.wakeup = asyncio.Event()

    def add(self, stream: Stream) -> None:
        """The first delta goes out at once (or after its `first` delay); the rest on the
        stream's schedule."""
        now = time.monotonic_ns()
        if stream.t0 > now:
            heapq.heappush(self.heap, (stream.t0, next(self.counter), stream))
        else:
            self._write_one(stream, now)
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            if not self.heap:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            wait = (self.heap[0][0] - time.monotonic_ns()) / 1e9
            if wait > 0:
                # Capped: a stream added meanwhile may be due before the current head.
                await asyncio.sleep(min(wait, 0.001))
            now = time.monotonic_ns()
            while self.heap and self.heap[0][0] <= now:
                _, _, stream = heapq.heappop(self.heap)
                self._write_one(stream, time.monotonic_ns())

    def _write_one(self, stream: Stream, now: int) -> None:
        transport = stream.writer.transport
        if transport.is_closing():
            if not stream.done.done():
                stream.done.set_result(False)
            return
        piece = HEAD + json.dumps({"content": stream.content(now)}, separators=(",", ":")) + TAIL
        stream.seq += 1
        if stream.seq >= stream.n:
            transport.write(
                _chunk(piece) + _chunk(FINISH + _usage(stream.n) + "data: [DONE]\n\n") + b"0\r\n\r\n"
            )
            if not stream.done.done():
                stream.done.set_result(True)
            return
        transport.write(_chunk(piece))
        heapq.heappush(self.heap, (stream.due_ns(), next(self.counter), stream))


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1] if " " in lines[0] else ""
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length") or 0))
    return path, headers, body


def _params(body: bytes) -> tuple[int, float, int, str, int]:
    try:
        messages = json.loads(body)["messages"]
        text = str(messages[-1]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        text = ""
    found = dict(_PARAM.findall(text))
    return (
        max(1, min(int(found.get("n", 20)), 100_000)),
        max(0.1, float(found.get("rate", 50))),
        max(0, min(int(found.get("pad", 0)), 1 << 20)),
        found.get("mode", "stamp"),
        max(0, min(int(found.get("first", 0)), 60_000)),
    )


async def serve(port: int = 0) -> None:
    scheduler = Scheduler()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                path, headers, body = request
                if not path.endswith("/chat/completions"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                n, rate, pad, mode, first_ms = _params(body)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
                    + _chunk(HEAD + '{"role":"assistant","content":""}' + TAIL)
                )
                stream = Stream(writer, n, rate, pad, mode, first_ms)
                scheduler.add(stream)
                if not await stream.done:
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a client went away, or shutdown: nothing to report either way
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=1 << 22)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    runner = asyncio.create_task(scheduler.run())
    await stop
    runner.cancel()
    server.close()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()

"""The measurements of issue #6, each a coroutine returning a JSON-able dict.

"Added" always means: the app's percentile minus the same percentile of the
same streams read straight from the upstream, in rounds interleaved with the
app's (app first in even rounds, direct first in odd ones, so drift cancels).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import subprocess
import time
from dataclasses import dataclass

from bench import clients
from bench.app import PYTHON, ROOT, AppServer, ProcStat, Upstream
from bench.clients import Round, StreamResult, now_ns
from bench.stats import added, percentile, summary_ms

KIB = 1024


@dataclass
class Plan:
    quick: bool
    ttft_single_rounds: int
    burst_streams: int
    burst_rounds: int
    single_n: int
    single_rounds: int
    many_streams: int
    many_n: int
    many_rounds: int
    capacity_steps: list[int]
    capacity_n: int
    capacity_budget_s: float
    memory_streams: int
    memory_n: int
    slow_readers: int
    slow_seconds: float
    slow_pad: int
    db_rounds: int
    counting_runs: int
    services_rounds: int
    thinking_ms: int = 300  # the provider's own time to first token, for the ttft_thinking rows
    thinking_single_rounds: int = 10
    thinking_burst_rounds: int = 3

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                quick=True,
                ttft_single_rounds=5,
                burst_streams=20,
                burst_rounds=1,
                single_n=100,
                single_rounds=1,
                many_streams=20,
                many_n=100,
                many_rounds=1,
                capacity_steps=[20, 40],
                capacity_n=100,
                capacity_budget_s=30,
                memory_streams=30,
                memory_n=100,
                slow_readers=1,
                slow_seconds=5,
                slow_pad=4000,
                db_rounds=1,
                counting_runs=20,
                services_rounds=1,
                thinking_single_rounds=3,
                thinking_burst_rounds=1,
            )
        return cls(
            quick=False,
            ttft_single_rounds=20,
            burst_streams=100,
            burst_rounds=4,
            single_n=300,
            single_rounds=4,
            many_streams=200,
            many_n=250,
            many_rounds=2,
            capacity_steps=[100, 200, 300, 400, 500, 600, 700, 800],
            capacity_n=250,
            capacity_budget_s=170,
            memory_streams=200,
            memory_n=250,
            slow_readers=2,
            slow_seconds=10,
            slow_pad=12000,
            db_rounds=3,
            counting_runs=200,
            services_rounds=2,
        )


class Bench:
    """What every scenario needs: the upstream, the direct-read client, the processes."""

    def __init__(self, upstream: Upstream, plan: Plan, baseline: str = "raw") -> None:
        self.upstream = upstream
        self.plan = plan
        self.baseline = baseline
        if baseline == "httpx":
            client = clients.httpx_client(max([*plan.capacity_steps, plan.burst_streams, plan.many_streams]))
            self.direct = client
            self.reader = functools.partial(clients.httpx_stream, client, upstream.base_url)
        else:
            self.direct = clients.DirectPool(upstream.port)
            self.reader = functools.partial(clients.direct_stream, self.direct)

    def procs(self, app: AppServer) -> dict[str, ProcStat]:
        return {"server": app.stat, "upstream": self.upstream.stat}

    async def app_round(self, app: AppServer, **kw) -> Round:
        return await clients.app_round(app, self.procs(app), **kw)

    async def direct_round(self, app: AppServer, **kw) -> Round:
        return await clients.direct_round(self.reader, self.procs(app), **kw)

    async def interleaved(self, app: AppServer, rounds: int, **kw) -> tuple[list[Round], list[Round]]:
        app_rounds, direct_rounds = [], []
        for i in range(rounds):
            order = ("app", "direct") if i % 2 == 0 else ("direct", "app")
            for path in order:
                if path == "app":
                    app_rounds.append(await self.app_round(app, **kw))
                else:
                    direct_rounds.append(await self.direct_round(app, **kw))
        return app_rounds, direct_rounds

    async def close(self) -> None:
        await self.direct.aclose()


def _streams(rounds: list[Round]) -> list[StreamResult]:
    return [s for r in rounds for s in r.streams]


def _failures(streams: list[StreamResult]) -> dict:
    bad = [s for s in streams if not s.delivered]
    return {
        "replies": len(streams),
        "delivered": len(streams) - len(bad),
        "pieces_expected": sum(s.expected for s in streams),
        "pieces_received": sum(s.pieces for s in streams),
        "errors": sorted({s.error or s.status or "incomplete" for s in bad})[:5],
    }


def _ttft(app_rounds: list[Round], direct_rounds: list[Round]) -> dict:
    app = summary_ms([s.ttft_ns for s in _streams(app_rounds) if s.ttft_ns is not None])
    direct = summary_ms([s.ttft_ns for s in _streams(direct_rounds) if s.ttft_ns is not None])
    # Where the app's time goes: send -> `start` frame (the database turn), `start` -> first delta.
    begin = summary_ms([s.start_ns - s.sent_ns for s in _streams(app_rounds) if s.start_ns])
    relay = summary_ms([s.first_ns - s.start_ns for s in _streams(app_rounds) if s.start_ns and s.first_ns])
    return {
        "app_ms": app,
        "direct_ms": direct,
        "added_ms": added(app, direct),
        "app_send_to_start_ms": begin,
        "app_start_to_first_delta_ms": relay,
        **_failures(_streams(app_rounds)),
    }


def _latency(app_rounds: list[Round], direct_rounds: list[Round]) -> dict:
    app = summary_ms([v for s in _streams(app_rounds) for v in s.latencies])
    direct = summary_ms([v for s in _streams(direct_rounds) for v in s.latencies])
    lags = [v / 1000 for r in app_rounds + direct_rounds for s in r.streams for v in s.lags]
    pieces = sum(len(s.latencies) for s in _streams(app_rounds))
    held = sum(s.held for s in _streams(app_rounds))
    return {
        "app_ms": app,
        "direct_ms": direct,
        "added_ms": added(app, direct),
        "held_until_saved_percent": _r(held / pieces * 100 if pieces else 0, 2),
        "generator_lag_p99_ms": _r(percentile(lags, 99)),
        **_failures(_streams(app_rounds)),
    }


def _steady(rounds: list[Round], start_s: float, end_s: float) -> dict:
    """Server CPU per relayed piece, and each process's CPU use, in the steady window.

    `*_wait_percent` is how long that process's threads sat runnable without a CPU
    (from /proc/<pid>/task/*/schedstat): high values mean other work on the machine
    delayed it, and its latency figures include that."""
    totals = {
        k: 0.0
        for k in ("server_cpu", "clients_cpu", "upstream_cpu", "server_wait", "clients_wait", "upstream_wait")
    }
    pieces = seconds = 0.0
    for r in rounds:
        window = r.window(start_s, end_s)
        if window is None:
            continue
        a, b = window
        for key in totals:
            totals[key] += b.get(key, 0.0) - a.get(key, 0.0)
        seconds += (b["t"] - a["t"]) / 1e9
        pieces += r.pieces_between(a["t"], b["t"])
    if not pieces or not seconds:
        return {}
    return {
        "server_cpu_us_per_delta": _r(totals["server_cpu"] / pieces * 1e6, 1),
        "deltas_per_s": _r(pieces / seconds, 0),
        **{f"{key}_percent": _r(value / seconds * 100, 0) for key, value in totals.items()},
        "window_s": _r(seconds, 2),
    }


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- 1. time to first token ----------------------------------------------------------------------
async def ttft_single(bench: Bench, app: AppServer, rounds: int) -> dict:
    kw = dict(streams=1, n=5, rate=100, spread=0, limit_s=30)
    await bench.interleaved(app, 1, **kw)  # warm-up: vocabularies, connection pools
    return {"streams": 1, "rounds": rounds, **_ttft(*await bench.interleaved(app, rounds, **kw))}


async def ttft_burst(bench: Bench, app: AppServer, streams: int, rounds: int) -> dict:
    kw = dict(streams=streams, n=5, rate=100, spread=0, limit_s=120)
    await bench.interleaved(app, 1, **{**kw, "n": 2})  # warm-up: fill both connection pools
    return {"streams": streams, "rounds": rounds, **_ttft(*await bench.interleaved(app, rounds, **kw))}


async def ttft_thinking(bench: Bench, app: AppServer, streams: int, rounds: int, first_ms: int) -> dict:
    """TTFT when the provider itself takes `first_ms` to its first token (as real ones do):
    what the app adds then is what it does not manage to do while the provider thinks."""
    kw = dict(streams=streams, n=5, rate=100, spread=0, limit_s=120, first_ms=first_ms)
    await bench.interleaved(app, 1, **{**kw, "n": 2})  # warm-up
    return {
        "streams": streams,
        "rounds": rounds,
        "first_ms": first_ms,
        **_ttft(*await bench.interleaved(app, rounds, **kw)),
    }


# -- 2. per-delta latency (and 4. CPU per delta) --------------------------------------------------
async def latency(bench: Bench, app: AppServer, streams: int, rate: float, n: int, rounds: int) -> dict:
    spread = 1 / rate if streams > 1 else 0  # ticks spread evenly over one token interval
    limit_s = n / rate + 60
    app_rounds, direct_rounds = await bench.interleaved(
        app, rounds, streams=streams, n=n, rate=rate, spread=spread, limit_s=limit_s
    )
    return {
        "streams": streams,
        "rate": rate,
        "n": n,
        "rounds": rounds,
        **_latency(app_rounds, direct_rounds),
        "steady": _steady(app_rounds, spread + 1.0, n / rate - 0.3),
    }


# -- 3. capacity ------------------------------------------------------------------------------------
async def capacity(bench: Bench, app: AppServer, steps: list[int], n: int, budget_s: float) -> dict:
    """Step up until a step fails; if the first step fails, halve down (twice at most)
    so the figure says what one process does carry."""
    rate = 50.0
    deadline = time.monotonic() + budget_s
    results, best, stop = [], 0, "cap reached"
    queue = list(steps)
    while queue:
        streams = queue.pop(0)
        step_cost = 2 * (n / rate + 3 + streams / 100)
        if time.monotonic() + step_cost > deadline:
            stop = f"time budget ({budget_s:.0f} s) reached"
            break
        step = await latency(bench, app, streams, rate, n, 1)
        holds = step["delivered"] == step["replies"] and (step["added_ms"]["p99"] or 0) <= 25
        step["holds"] = holds
        results.append(step)
        if holds:
            best = max(best, streams)
            if streams < steps[0]:
                stop = f"failed at {steps[0]}"
                break
            continue
        stop = f"failed at {streams}"
        if streams == steps[0] and len(results) == 1:
            queue = [s for s in (streams // 2, streams // 4) if s >= 5]
            continue
        if streams < steps[0]:
            continue
        break
    return {"rate": rate, "n": n, "max_streams": best, "stopped": stop, "steps": results}


# -- 4. memory ------------------------------------------------------------------------------------
async def memory(bench: Bench, app: AppServer, streams: int, n: int) -> dict:
    """On a fresh server: RSS per idle socket, then per active stream on the same sockets."""
    rate = 50.0
    await bench.app_round(app, streams=1, n=5, rate=100, spread=0, limit_s=30)  # load what one reply loads
    await asyncio.sleep(1.0)
    rss_empty = app.stat.rss_bytes()
    sockets = await clients.open_sockets(app, app.take_conversations(streams))
    try:
        await asyncio.sleep(1.0)
        rss_idle = app.stat.rss_bytes()
        text = clients.prompt(n, rate)
        with clients.Sampler(bench.procs(app), interval=0.1) as sampler:
            started = now_ns()
            results = await asyncio.gather(
                *(
                    clients.app_stream(ws, text, n, delay=i / streams / rate, limit_s=n / rate + 60)
                    for i, ws in enumerate(sockets)
                )
            )
            ended = now_ns()
    finally:
        await clients.close_sockets(sockets)
    rss_active = max(s["server_rss"] for s in sampler.samples if "server_rss" in s)
    active_round = Round("app", list(results), started, ended, sampler.samples)
    content = n * len("<123:1234567890123:123>")
    return {
        "streams": streams,
        "n": n,
        "reply_bytes_about": content,
        "rss_before_mib": _r(rss_empty / KIB / KIB, 1),
        "idle_kib_per_connection": _r((rss_idle - rss_empty) / streams / KIB, 1),
        "active_kib_per_stream": _r((rss_active - rss_idle) / streams / KIB, 1),
        "steady": _steady([active_round], 1.0 + 1 / rate, n / rate - 0.3),
        **_failures(list(results)),
    }


def _socket_queues(port: int) -> tuple[int, int]:
    """Bytes queued in the kernel: (server side send queues, client side receive queues)."""
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True).stdout
    send_q = recv_q = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        recv, send, local, peer = int(parts[0]), int(parts[1]), parts[2], parts[3]
        if local.endswith(f":{port}"):
            send_q += send
        elif peer.endswith(f":{port}"):
            recv_q += recv
    return send_q, recv_q


async def slow_reader(bench: Bench, app: AppServer, readers: int, seconds: float, pad: int) -> dict:
    """Clients that send, then read nothing for `seconds` while their replies stream."""
    rate = 100.0
    n = int(seconds * rate)
    text = clients.prompt(n, rate, pad=pad)
    await bench.app_round(app, streams=1, n=5, rate=100, spread=0, limit_s=30)  # warm-up
    await asyncio.sleep(0.5)
    rss_before = app.stat.rss_bytes()
    sockets = [
        await clients.open_socket(app, cid, small_buffer=True) for cid in app.take_conversations(readers)
    ]
    rss_samples = []
    try:
        for ws in sockets:
            await ws.send(json.dumps({"type": "send", "content": text}))
        sent_at = time.monotonic()
        while time.monotonic() - sent_at < seconds - 0.3:
            await asyncio.sleep(0.5)
            rss_samples.append(app.stat.rss_bytes())
        rss_stalled = app.stat.rss_bytes()
        server_send_q, client_recv_q = _socket_queues(app.port)
        # Then read everything: the reply must still arrive whole.
        drained_at = time.monotonic()
        results = await asyncio.gather(
            *(_drain(ws, n, limit_s=120) for ws in sockets),
        )
        drain_s = time.monotonic() - drained_at
    finally:
        await clients.close_sockets(sockets)
    frame_bytes = readers * n * (pad + 90)
    produced = readers * min(n, int((seconds - 0.3) * rate)) * (pad + 90)
    held = _peak_held(app)
    return {
        "readers": readers,
        "stalled_s": seconds,
        "stream_bytes_per_reader": n * (pad + 90),
        "rss_growth_mib": _r((rss_stalled - rss_before) / KIB / KIB, 1),
        "rss_growth_per_reader_mib": _r((rss_stalled - rss_before) / readers / KIB / KIB, 2),
        "rss_trend_mib": [_r((v - rss_before) / KIB / KIB, 1) for v in rss_samples],
        "kernel_queued_mib": _r((server_send_q + client_recv_q) / KIB / KIB, 2),
        "produced_mib": _r(produced / KIB / KIB, 1),
        "held_in_daphne_peak_kib": None if held is None else _r(held / KIB, 1),
        "reply_text_held_mib": _r(frame_bytes / KIB / KIB, 1),
        "drain_s": _r(drain_s, 2),
        "delivered_after_stall": sum(1 for r in results if r.delivered),
    }


def _peak_held(app: AppServer) -> int | None:
    """The most bytes daphne held unsent for chat sockets (bench.apps samples it in the server)."""
    path = getattr(app, "buffer_file", None)
    try:
        return json.loads(path.read_text())["peak_bytes"] if path else None
    except (OSError, ValueError, KeyError):
        return 0


async def _drain(ws, n: int, limit_s: float) -> StreamResult:
    result = StreamResult("app", n)
    try:
        async with asyncio.timeout(limit_s):
            async for message in ws:
                if message.startswith(("+", '{"type":"delta"')):  # a text delta or a JSON one
                    result.pieces += len(clients.STAMP.findall(message))
                    continue
                frame = json.loads(message)
                if frame["type"] == "resume":  # a lagging reader is caught up with the whole reply
                    result.pieces = len(clients.STAMP.findall(frame["content"]))
                elif frame["type"] == "done":
                    result.status = frame["status"]
                    break
    except (TimeoutError, Exception) as exc:  # noqa: BLE001 - reported, not raised
        result.error = type(exc).__name__
    return result


# -- 5. database writes, bytes, counting ---------------------------------------------------------------
def classify(counts_before: dict, counts_after: dict) -> dict[str, int]:
    """Writes between two counter snapshots, by what they are in the reply lifecycle."""
    kinds: dict[str, int] = {}
    for shape, total in counts_after.items():
        delta = total - counts_before.get(shape, 0)
        if not delta:
            continue
        if shape.startswith("error:"):
            kind = "database is locked"
        elif shape.startswith(("INSERT", "WITH")) and 'INSERT INTO "chat_message"' in shape:
            kind = "insert messages"  # a WITH inserts the user's message and its reply in one
        elif shape.startswith("UPDATE") and "chat_conversation" in shape:
            kind = "update conversation"
        elif shape.startswith("UPDATE") and "chat_message" in shape:
            set_part = shape.split(" SET ", 1)[-1]
            if re.search(r'"status" = ', set_part):
                kind = "finish reply"
            elif re.search(r'"(content|seq)" = ', set_part):
                kind = "checkpoint text"
            else:
                kind = "renew lease"
        else:
            kind = "other: " + shape[:80]
        kinds[kind] = kinds.get(kind, 0) + delta
    return kinds


async def db_writes(bench: Bench, app: AppServer, rounds: int) -> dict:
    """8 replies started and finishing together, `rounds` times; counts come from inside
    the server (bench.apps); "database is locked" from its counter and its log."""
    rate, n, streams = 50.0, 150, 8
    await bench.app_round(app, streams=1, n=5, rate=100, spread=0, limit_s=30)  # warm-up
    await asyncio.sleep(0.5)
    before = app.sql_counts()
    app_rounds = [
        await bench.app_round(app, streams=streams, n=n, rate=rate, spread=0, limit_s=n / rate + 60)
        for _ in range(rounds)
    ]
    await asyncio.sleep(1.5)  # let the counter file catch up (written every 0.2 s)
    kinds = classify(before, app.sql_counts())
    replies = streams * rounds
    seconds = n / rate
    per_reply = {k: _r(v / replies, 2) for k, v in kinds.items()}
    lifecycle = sum(
        v for k, v in kinds.items() if k in ("insert messages", "update conversation", "finish reply")
    )
    checkpoints = kinds.get("checkpoint text", 0) + kinds.get("renew lease", 0)
    locked_log = app.count_in_log(r"database is locked")
    return {
        "replies": replies,
        "stream_seconds": seconds,
        "by_kind_per_reply": per_reply,
        "writes_per_reply": _r(sum(kinds.values()) / replies, 2),
        "lifecycle_writes_per_reply": _r(lifecycle / replies, 2),
        "checkpoint_writes_per_reply_second": _r(checkpoints / replies / seconds, 2),
        "database_is_locked": kinds.get("database is locked", 0) + locked_log,
        **_failures(_streams(app_rounds)),
    }


async def wire_bytes(bench: Bench, app: AppServer) -> dict:
    """Realistic tokens (about 4 characters), one reply: websocket bytes vs content bytes."""
    n = 200
    r = await bench.app_round(
        app, streams=1, n=n, rate=100, spread=0, limit_s=60, mode="words", count_bytes=True
    )
    s = r.streams[0]
    return {
        "n": n,
        "frames": s.frames,
        "delta_frames": s.delta_frames,
        "wire_bytes": s.wire_bytes,
        "content_bytes": s.content_bytes,
        "ratio": _r(s.wire_bytes / s.content_bytes, 2) if s.content_bytes else None,
        "bytes_per_delta_frame": _r(s.wire_bytes / max(1, s.delta_frames), 1),
        "status": s.status,
    }


def counting(runs: int, env: dict) -> dict:
    out = subprocess.run(
        [PYTHON, "-m", "bench.counting", str(runs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        return {"skipped": f"bench.counting failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])

"""Issue #6 part 6: the key figures on PostgreSQL and the Redis channel layer.

Uses the machine's services on loopback only: a fresh PostgreSQL database that is
dropped afterwards, and a Redis database number that was empty when the run
began (its `asgi*` keys are deleted afterwards). Whatever is absent is skipped,
with the reason in the results. With Redis, a second daphne process on the same
database and layer serves a watcher socket for every stream, to time the
cross-process fan-out too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time

from bench import clients, scenarios
from bench.app import ROOT, AppServer, ProcStat, daphne_command, free_port, pin, raise_fd_limit
from bench.clients import StreamResult, now_ns
from bench.stats import summary_ms

PG = "postgresql://postgres@127.0.0.1:5432/"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def pick_redis() -> tuple[str | None, str]:
    try:
        import redis
    except ImportError:
        return None, "the redis package is not installed"
    try:
        for number in range(15, 0, -1):
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_timeout=2)
            if client.dbsize() == 0:
                return f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}", f"db {number} (empty at start)"
    except Exception as exc:  # noqa: BLE001 - the reason is reported
        return None, f"Redis on {REDIS_HOST}:{REDIS_PORT} is not reachable ({type(exc).__name__})"
    return None, "no empty Redis database number (1-15) to use"


def clean_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    keys = list(client.scan_iter("asgi*", count=1000))
    if keys:
        client.delete(*keys)


def create_pg() -> tuple[str | None, str]:
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed"
    name = f"chat_bench_{os.getpid()}_{int(time.time())}"
    try:
        with psycopg.connect(PG + "postgres", autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - the reason is reported
        return None, f"PostgreSQL on 127.0.0.1:5432 is not usable ({type(exc).__name__}: {exc})"[:300]
    return PG + name, name


def drop_pg(name: str) -> None:
    import psycopg

    with psycopg.connect(PG + "postgres", autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Peer:
    """A second daphne process on the same database and channel layer as `app`."""

    def __init__(self, app: AppServer, cpus) -> None:
        self.port = free_port()
        self.log_path = app.dir / "peer.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            daphne_command(self.port),
            cwd=ROOT,
            env=app.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit,
        )
        log.close()
        pin(self.proc.pid, cpus)
        self.stat = ProcStat(self.proc.pid)
        self.session, self.origin = app.session, f"http://127.0.0.1:{self.port}"
        self.ws_base = f"ws://127.0.0.1:{self.port}/ws/chat/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the second daphne did not start")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _watch(ws, n: int, limit_s: float) -> StreamResult:
    """A second tab, on the other process: time every piece it is relayed."""
    result = StreamResult("remote", n)
    try:
        async with asyncio.timeout(limit_s):
            async for message in ws:
                now = now_ns()
                frame = json.loads(message)
                if frame["type"] == "delta":
                    result.delta_frames += 1
                    stamps = clients.STAMP.findall(frame.get("content", ""))
                    for _seq, sent, lag in stamps:
                        result.latencies.append(now - int(sent))
                        result.lags.append(int(lag))
                    result.pieces += len(stamps)
                elif frame["type"] == "resume":
                    result.pieces += len(clients.STAMP.findall(frame.get("content", "")))
                elif frame["type"] == "done":
                    result.status = frame["status"]
                    break
    except TimeoutError:
        result.error = "timeout"
    except Exception as exc:  # noqa: BLE001 - reported
        result.error = type(exc).__name__
    return result


async def cross_process(bench, app: AppServer, peer: Peer, pairs: int) -> dict:
    """Each of `pairs` conversations has a tab on each process; the first sends. The tab on
    the other process gets the reply through the Redis layer, coalesced by the pump."""
    rate, n = 50.0, 150
    ids = app.take_conversations(pairs)
    senders = await clients.open_sockets(app, ids)
    watchers = await clients.open_sockets(peer, ids)  # Peer quacks like an AppServer here
    await asyncio.sleep(0.5)
    text = clients.prompt(n, rate)
    try:
        watching = [asyncio.create_task(_watch(ws, n, n / rate + 60)) for ws in watchers]
        sent = await asyncio.gather(
            *(
                clients.app_stream(ws, text, n, delay=i / pairs / rate, limit_s=n / rate + 60)
                for i, ws in enumerate(senders)
            )
        )
        watched = await asyncio.gather(*watching)
    finally:
        await clients.close_sockets(senders + watchers)
    local = summary_ms([v for s in sent for v in s.latencies])
    remote = summary_ms([v for s in watched for v in s.latencies])
    return {
        "pairs": pairs,
        "rate": rate,
        "n": n,
        "same_process_ms": local,
        "other_process_ms": remote,
        "other_process_frames_per_reply": round(sum(s.delta_frames for s in watched) / max(1, pairs), 1),
        "other_process_complete": sum(1 for s in watched if s.status == "finished" and s.pieces >= n),
        "errors": sorted({s.error for s in watched if s.error})[:5],
    }


async def run(bench, plan, results: dict, cpus: dict, step, log, thinking) -> None:
    svc = results["services"] = {}
    redis_url, redis_note = await asyncio.to_thread(pick_redis)
    pg_url, pg_note = await asyncio.to_thread(create_pg)
    svc["redis"] = redis_note if redis_url else f"skipped: {redis_note}"
    svc["postgresql"] = "fresh database " + pg_note if pg_url else f"skipped: {pg_note}"
    if not redis_url:
        log(f"Redis part skipped: {redis_note}")
    if not pg_url:
        log(f"PostgreSQL part skipped: {pg_note}")
    if not redis_url and not pg_url:
        return
    rounds = plan.services_rounds
    needed = (
        plan.burst_streams * (rounds + 1)
        + plan.many_streams * rounds
        + plan.capacity_steps[min(2, len(plan.capacity_steps) - 1)]
        + 8 * plan.db_rounds
        + 2 * (plan.thinking_single_rounds + 1)
        + plan.burst_streams * (plan.thinking_burst_rounds + 1)
        + 200
    )
    app = None
    try:
        app = await asyncio.to_thread(
            AppServer,
            bench.upstream,
            conversations=needed,
            database_url=pg_url or "",
            redis_url=redis_url or "",
            count_sql=True,
            cpus=cpus["server"],
            label="services",
        )
        svc["label"] = " + ".join(
            part for part, on in (("PostgreSQL", pg_url), ("Redis layer", redis_url)) if on
        )
        await step(svc, "ttft_1", scenarios.ttft_single(bench, app, max(5, plan.ttft_single_rounds // 2)))
        await step(svc, "ttft_burst", scenarios.ttft_burst(bench, app, plan.burst_streams, rounds))
        await thinking(svc, bench, app, plan)
        await step(svc, "latency_1", scenarios.latency(bench, app, 1, 100, plan.single_n, rounds))
        await step(
            svc, "latency_many", scenarios.latency(bench, app, plan.many_streams, 50, plan.many_n, rounds)
        )
        streams = plan.capacity_steps[min(2, len(plan.capacity_steps) - 1)]
        await step(svc, "capacity_check", scenarios.latency(bench, app, streams, 50, plan.capacity_n, 1))
        await step(svc, "db_writes", scenarios.db_writes(bench, app, plan.db_rounds))
        if redis_url:
            peer = await asyncio.to_thread(Peer, app, cpus["server"])
            try:
                await step(svc, "cross_process", cross_process(bench, app, peer, 10 if plan.quick else 50))
            finally:
                peer.close()
                peer_log = peer.log_path.read_text(errors="replace") if peer.log_path.exists() else ""
                svc["peer_log_tracebacks"] = peer_log.count("Traceback (most recent call last)")
        svc["server_log"] = {
            "tracebacks": app.count_in_log(r"Traceback \(most recent call last\)"),
            "first_traceback": app.first_traceback(),
            "tail": app.log_tail(8)[-1500:],
        }
    finally:
        if app is not None:
            app.close()
        if pg_url:
            await asyncio.to_thread(drop_pg, pg_note)
        if redis_url:
            await asyncio.to_thread(clean_redis, redis_url)

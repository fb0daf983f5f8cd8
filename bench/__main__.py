"""`python -m bench [--quick]`: measure the relay (issue #6) and write the results.

Processes: the chat app under daphne (pinned to CPU 0 where there are two), the
loopback upstream (bench/upstream.py) and this process, which runs every client
(both pinned to CPU 1). Writes bench/results/<timestamp>.json, prints a Markdown
table, and (full runs, or --docs) rewrites docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench import report, scenarios, services
from bench.app import ROOT, AppServer, Upstream, tiktoken_cache
from bench.scenarios import Bench, Plan


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


DEADLINE = {"at": float("inf")}  # monotonic time after which no new measurement starts
ONLY: set[str] = set()  # --only: the measurements to run (their result keys); empty: all


async def step(results: dict, key: str, coro) -> None:
    """Run one measurement; a failure is recorded in the results, not fatal to the run."""
    if ONLY and key not in ONLY:
        coro.close()
        return
    if time.monotonic() > DEADLINE["at"]:
        coro.close()
        results[key] = {"skipped": "the run's time budget was spent"}
        log(f"{key} skipped: time budget spent")
        return
    log(f"{key} ...")
    started = time.monotonic()
    try:
        results[key] = await coro
    except Exception as exc:  # noqa: BLE001 - reported in the results and the log
        traceback.print_exc()
        results[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    log(f"{key} done in {time.monotonic() - started:.1f} s: {json.dumps(results[key])[:300]}")


def conversations_needed(plan: Plan) -> int:
    return (
        plan.slow_readers
        + 4
        + 2 * (plan.ttft_single_rounds + 2)
        + plan.burst_streams * (plan.burst_rounds + 1)
        + plan.single_rounds
        + plan.many_streams * plan.many_rounds
        + sum(plan.capacity_steps)
        + 2 * (plan.thinking_single_rounds + 1)
        + plan.burst_streams * (plan.thinking_burst_rounds + 1)
        + 100
    )


async def run(plan: Plan, results: dict, cpus: dict, skip_services: bool, baseline: str) -> None:
    upstream = Upstream(cpus=cpus["load"])
    bench = Bench(upstream, plan, baseline)
    try:
        # -- SQLite + in-memory layer: latency, capacity, slow readers ------------------------
        buffer_file = Path(tempfile.mkdtemp(prefix="bench-buffers-")) / "buffers.json"
        app = await asyncio.to_thread(
            AppServer,
            upstream,
            conversations=conversations_needed(plan),
            cpus=cpus["server"],
            extra_env={"BENCH_BUFFER_FILE": str(buffer_file)},
        )
        app.buffer_file = buffer_file
        main = results["sqlite"] = {}
        try:
            # First, on a fresh heap, so freed memory cannot hide what slow readers cost.
            await step(
                main,
                "slow_reader",
                scenarios.slow_reader(bench, app, plan.slow_readers, plan.slow_seconds, plan.slow_pad),
            )
            await step(main, "ttft_1", scenarios.ttft_single(bench, app, plan.ttft_single_rounds))
            await step(
                main, "ttft_burst", scenarios.ttft_burst(bench, app, plan.burst_streams, plan.burst_rounds)
            )
            await thinking(main, bench, app, plan)
            await step(
                main, "latency_1", scenarios.latency(bench, app, 1, 100, plan.single_n, plan.single_rounds)
            )
            await step(
                main,
                "latency_many",
                scenarios.latency(bench, app, plan.many_streams, 50, plan.many_n, plan.many_rounds),
            )
            await step(
                main,
                "capacity",
                scenarios.capacity(bench, app, plan.capacity_steps, plan.capacity_n, plan.capacity_budget_s),
            )
            main["server_log"] = server_log(app)
        finally:
            app.close()

        # -- a fresh server for memory per connection and per stream -----------------------------
        app = await asyncio.to_thread(
            AppServer, upstream, conversations=plan.memory_streams + 10, cpus=cpus["server"], label="memory"
        )
        try:
            await step(main, "memory", scenarios.memory(bench, app, plan.memory_streams, plan.memory_n))
        finally:
            app.close()

        # -- SQL write counter: writes per reply, "database is locked", bytes on the wire --------
        app = await asyncio.to_thread(
            AppServer,
            upstream,
            conversations=8 * plan.db_rounds + 20,
            cpus=cpus["server"],
            count_sql=True,
            label="sqlcount",
        )
        try:
            await step(main, "db_writes", scenarios.db_writes(bench, app, plan.db_rounds))
            await step(main, "wire_bytes", scenarios.wire_bytes(bench, app))
            main["sqlcount_server_log"] = server_log(app)
        finally:
            app.close()

        await step(
            main, "counting", asyncio.to_thread(scenarios.counting, plan.counting_runs, counting_env())
        )

        # -- PostgreSQL + Redis channel layer ----------------------------------------------------
        if skip_services:
            results["services"] = {"skipped": "--no-services"}
        else:
            await services.run(bench, plan, results, cpus, step, log, thinking)
    finally:
        await bench.close()
        upstream.close()


async def thinking(results: dict, bench: Bench, app: AppServer, plan: Plan) -> None:
    """The rows of a provider that takes plan.thinking_ms to its first token (issue #15)."""
    await step(
        results,
        "ttft_thinking_1",
        scenarios.ttft_thinking(bench, app, 1, plan.thinking_single_rounds, plan.thinking_ms),
    )
    await step(
        results,
        "ttft_thinking_burst",
        scenarios.ttft_thinking(bench, app, plan.burst_streams, plan.thinking_burst_rounds, plan.thinking_ms),
    )


def server_log(app: AppServer) -> dict:
    return {
        "database_is_locked": app.count_in_log(r"database is locked"),
        "tracebacks": app.count_in_log(r"Traceback \(most recent call last\)"),
        "errors": app.count_in_log(r" ERROR "),
        "first_traceback": app.first_traceback(),
        "tail": app.log_tail(8)[-1500:],
    }


def counting_env() -> dict:
    env = dict(os.environ)
    cache = tiktoken_cache()
    if cache:
        env["TIKTOKEN_CACHE_DIR"] = cache
    return env


def choose_cpus(pin: bool) -> dict:
    count = len(os.sched_getaffinity(0))
    if not pin or count < 2:
        return {"server": None, "load": None, "note": "not pinned"}
    available = sorted(os.sched_getaffinity(0))
    server, load = {available[0]}, {available[1]}
    os.sched_setaffinity(0, load)
    return {
        "server": server,
        "load": load,
        "note": f"daphne on CPU {available[0]}; upstream + clients on CPU {available[1]}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, about a minute: a smoke run")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin daphne and the load to separate CPUs"
    )
    parser.add_argument("--no-services", action="store_true", help="skip the PostgreSQL + Redis run")
    parser.add_argument(
        "--baseline",
        choices=("raw", "httpx"),
        default="raw",
        help="how direct reads are made: a minimal HTTP/1.1 reader (default) or httpx",
    )
    parser.add_argument("--docs", action="store_true", help="rewrite docs/benchmark.md even for --quick")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated measurements to run, by their key in the results (e.g. "
        "ttft_1,cross_process), on both paths; the docs are not rewritten",
    )
    args = parser.parse_args(argv)
    ONLY.update(key for key in args.only.split(",") if key)

    plan = Plan.make(args.quick)
    cpus = choose_cpus(not args.no_pin)
    started = time.time()
    # Full runs must end within 12 minutes: no measurement starts after 10.
    DEADLINE["at"] = time.monotonic() + (150 if args.quick else 600)
    results: dict = {
        "meta": report.machine(),
        "plan": asdict(plan),
        "pinning": cpus["note"],
        "baseline": args.baseline,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
    try:
        asyncio.run(run(plan, results, cpus, args.no_services, args.baseline))
    finally:
        results["duration_s"] = round(time.time() - started, 1)
        results["meta"]["loadavg_end"] = report.loadavg()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
        out = ROOT / "bench" / "results" / f"{stamp}{'-quick' if args.quick else ''}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        table = report.markdown(results)
        print(table)
        log(f"wrote {out.relative_to(ROOT)} in {results['duration_s']} s")
        if (not args.quick or args.docs) and not ONLY:
            report.write_docs(results, table, Path(out).relative_to(ROOT))
            log("wrote docs/benchmark.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

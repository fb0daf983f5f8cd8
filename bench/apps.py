"""Counts the app's INSERT/UPDATE/DELETE statements from inside the server process.

Installed only through bench.settings. Every new database connection gets an
execute wrapper; a daemon thread writes the counts to BENCH_SQL_COUNT_FILE as
JSON every 0.2 s, so the benchmark can read them without touching chat/ code.
"""

import json
import os
import re
import threading
import time
from collections import Counter

from django.apps import AppConfig
from django.db.backends.signals import connection_created

_WHERE = re.compile(r"\s+WHERE\s.*", re.I | re.S)
_lock = threading.Lock()
_counts: Counter = Counter()


def _shape(sql: str) -> str:
    """The statement without its WHERE clause and values: which table, which columns."""
    shape = _WHERE.sub("", sql)
    shape = re.sub(r"%s|\?", "?", shape)
    shape = re.sub(r"VALUES\s*\(.*", "VALUES (...)", shape, flags=re.S)
    shape = re.sub(r'= "[a-z_]+"\."[a-z_]+"', "= (expr)", shape)
    return shape[:300]


# A data-modifying WITH (PostgreSQL's one-statement turn, chat.replies._insert_turn) writes too.
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE)\b")


def _counter(execute, sql, params, many, context):
    verb = sql.lstrip()[:6].upper()
    try:
        return execute(sql, params, many, context)
    except Exception as exc:
        if "locked" in str(exc):
            with _lock:
                _counts["error: database is locked"] += 1
        raise
    finally:
        if verb in ("INSERT", "UPDATE", "DELETE") or (verb.startswith("WITH") and _WRITES.search(sql)):
            # An executemany runs the statement once per parameter set: each is a write.
            runs = len(params) if many and hasattr(params, "__len__") else 1
            with _lock:
                _counts[_shape(sql)] += runs


def _install(sender, connection, **kwargs) -> None:
    if _counter not in connection.execute_wrappers:
        connection.execute_wrappers.append(_counter)


def _dump(path: str) -> None:
    last = None
    while True:
        time.sleep(0.2)
        with _lock:
            snapshot = dict(_counts)
        if snapshot != last:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(snapshot, f)
            os.replace(tmp, path)
            last = snapshot


def _watch_buffers(path: str) -> None:
    """Peak bytes daphne holds unsent for the chat sockets (chat.backpressure bounds it)."""
    from chat import worker
    from chat.backpressure import pending_bytes

    def held(here) -> int:  # runs on the event loop's thread, which owns the sockets
        return sum(pending_bytes(socket.lag.transport) or 0 for socket in here.watchers.all())

    peak = 0
    while True:
        time.sleep(0.05)
        try:
            total = sum(here.from_thread(held) for here in worker.workers())
        except Exception:  # the loop closing, or too busy to answer within the timeout
            continue
        if total > peak:
            peak = total
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"peak_bytes": peak}, f)
            os.replace(tmp, path)


class SQLCounterConfig(AppConfig):
    name = "bench"
    label = "bench_sql_counter"
    verbose_name = "Benchmark SQL write counter"

    def ready(self) -> None:
        buffers = os.environ.get("BENCH_BUFFER_FILE")
        if buffers:
            threading.Thread(
                target=_watch_buffers, args=(buffers,), name="bench-buffers", daemon=True
            ).start()
        path = os.environ.get("BENCH_SQL_COUNT_FILE")
        if not path:
            return
        connection_created.connect(_install, dispatch_uid="bench-sql-counter")
        threading.Thread(target=_dump, args=(path,), name="bench-sql-counter", daemon=True).start()

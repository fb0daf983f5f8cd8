"""The processes under test: the chat app under daphne, and the loopback upstream.

Each AppServer gets a fresh CHAT_DATA_DIR (SQLite there unless DATABASE_URL is
given), is migrated, and gets one user with a session cookie and a pool of empty
conversations, all through `manage.py` so the benchmark shares no state with
the server process.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def daphne_command(port: int) -> list[str]:
    """One daphne worker as run.sh runs it (the handshake timeout included), on `port`."""
    return [
        PYTHON,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "--websocket_connect_timeout",
        "30",
        "chatsite.asgi:application",
    ]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

SETUP_SCRIPT = """
import json
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from chat.models import Conversation
count = {count}
user = get_user_model().objects.create_user("bench", password=None)
session = SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.create()
Conversation.objects.bulk_create([Conversation(user=user) for _ in range(count)], batch_size=500)
ids = list(Conversation.objects.filter(user=user).order_by("id").values_list("id", flat=True))
print("BENCH-SETUP " + json.dumps({{"session": session.session_key, "conversations": ids}}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def tiktoken_cache() -> str | None:
    """The shared vocabulary cache, so token counts work offline in a fresh data dir."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    shared = ROOT.parent / "shared" / "tiktoken-cache"
    return str(shared) if shared.is_dir() else None


class ProcStat:
    """CPU seconds and RSS of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def wait_seconds(self) -> float:
        """Time its threads were runnable but waiting for a CPU (other work on the machine)."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
        return total / 1e9

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE


class Upstream:
    """The loopback upstream (bench/upstream.py) in its own process."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.upstream"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=raise_fd_limit,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"the bench upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.stat = ProcStat(self.proc.pid)
        pin(self.proc.pid, cpus)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class AppServer:
    """The chat app under one daphne process, with its own data directory."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        conversations: int,
        database_url: str = "",
        redis_url: str = "",
        count_sql: bool = False,
        extra_env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        label: str = "sqlite",
    ) -> None:
        self.label = label
        self.dir = Path(tempfile.mkdtemp(prefix=f"chat-bench-{label}-"))
        self.port = free_port()
        self.log_path = self.dir / "daphne.log"
        self.sql_count_path = self.dir / "sql-counts.json" if count_sql else None
        self.env = {
            **os.environ,
            "CHAT_DATA_DIR": str(self.dir),
            "DJANGO_SETTINGS_MODULE": "bench.settings" if count_sql or extra_env else "chatsite.settings",
            "OPENAI_BASE_URL": upstream.base_url,
            "OPENAI_API_KEY": "sk-bench-not-a-secret",
            "CHAT_MODEL": "gpt-4o-mini",
            "CHAT_FRAMES_PER_SECOND": "100000",
            "CHAT_FRAME_BURST": "100000",
            "CHAT_UPSTREAM_RETRIES": "0",
            "CHAT_ENV_FILE": os.devnull,  # a repo .env must not change what is measured
            # One user runs every stream: a cap it never reaches, so each send still pays its query.
            "CHAT_MAX_REPLIES_PER_USER": "1000000",
            # The relay is measured, not titles: a title request after each chat's first reply
            # would be one more upstream request the load generator answers as a long reply.
            "CHAT_MODEL_TITLES": "false",
            "DJANGO_DEBUG": "false",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DJANGO_SECRET_KEY": "bench-" + os.urandom(16).hex(),
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("DATABASE_URL", "REDIS_URL", "BENCH_SQL_COUNT_FILE"):
            self.env.pop(name, None)
        if database_url:
            self.env["DATABASE_URL"] = database_url
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        if self.sql_count_path:
            self.env["BENCH_SQL_COUNT_FILE"] = str(self.sql_count_path)
        cache = tiktoken_cache()
        if cache:
            self.env["TIKTOKEN_CACHE_DIR"] = cache
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self._manage("migrate", "--noinput", timeout=180)
        out = self._manage("shell", "-c", SETUP_SCRIPT.format(count=conversations), timeout=180)
        setup = json.loads(out.split("BENCH-SETUP ", 1)[1])
        self.session = setup["session"]
        self.conversations: list[int] = setup["conversations"]
        self._next = 0
        self._start(cpus)

    def _manage(self, *args: str, timeout: float) -> str:
        result = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def _start(self, cpus: set[int] | None) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            daphne_command(self.port),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit,
        )
        log.close()
        pin(self.proc.pid, cpus)
        self.stat = ProcStat(self.proc.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited at start-up:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("daphne did not start listening within 60 s")

    # -- what the clients need ----------------------------------------------------
    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def take_conversations(self, count: int) -> list[int]:
        if self._next + count > len(self.conversations):
            raise RuntimeError(f"the {self.label} run ran out of prepared conversations")
        ids = self.conversations[self._next : self._next + count]
        self._next += count
        return ids

    # -- what the report needs ----------------------------------------------------
    def sql_counts(self) -> dict[str, int]:
        if self.sql_count_path is None or not self.sql_count_path.exists():
            return {}
        return json.loads(self.sql_count_path.read_text())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def first_traceback(self, limit: int = 2500) -> str:
        """The first traceback in the log (the log is deleted with the data directory)."""
        text = self.log_text()
        start = text.find("Traceback (most recent call last)")
        if start < 0:
            return ""
        start = text.rfind("\n", 0, start) + 1
        return text[start : start + limit]

    def count_in_log(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log_text()))

    def close(self, keep_dir: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

"""Real server processes for end-to-end tests: daphne on a free port, signed in over HTTP.

A `Site` is one deployment: a data directory, a database, an environment, and
the `manage.py` commands that prepare it. A `LiveServer` is one daphne process
serving that site; start several on one site (with a shared PostgreSQL
`DATABASE_URL` and a `REDIS_URL`) to run the app scaled out. A `ChatSocket` is a
`websockets` client on /ws/chat/<id>/ with the session cookie and a same-site
Origin, as a browser would open it.

    with UpstreamServer() as upstream:
        site = Site(tmp_path, upstream=upstream, env={"CHAT_CHECKPOINT_INTERVAL": "0.2"})
        site.migrate()
        site.create_user("alice", "pw")
        conversation_id = site.create_conversation("alice")
        with site.server() as server:                  # started; stopped on exit
            cookie = server.login("alice", "pw")       # sessionid over real HTTP
            async with server.socket(conversation_id, cookie) as ws:
                await ws.send({"type": "send", "content": "Hi"})
                frames = await ws.frames_until("done")
            server.kill()                              # SIGKILL; server.restart() brings it back
        assert "sk-..." not in server.log_text()       # stdout + stderr of every run

Scaled out: `site = Site(tmp, upstream=..., database_url="postgresql://...",
redis_url="redis://127.0.0.1:6379/<n>")`, then `a, b = site.start_servers(2)`.
`ChatSocket.text` is the streaming reply as a browser shows it (resume and
deltas applied by the protocol's seq rule); `await ws.until_text("Hel")` waits
for it.

Every wait has a deadline and every process is killed on exit (also when a
test fails), so a broken server fails a test instead of hanging the run.
Browser tests and benchmarks can use `server.url(...)`, `server.origin`,
`server.login(...)` (set the `sessionid` cookie) and `site.messages(...)`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tests.conftest import TEST_API_KEY
from tests.wire import FrameDecoder

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Variables of the surrounding shell that would change what the server does; a Site sets its own.
_OWN_PREFIXES = ("CHAT_", "DJANGO_", "OPENAI_", "DATABASE_URL", "REDIS_URL")


class ServerError(RuntimeError):
    """A server process did not start, or a manage.py command failed; the message has its output."""


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Site:
    """One deployment of the app: data directory, database and environment for its processes.

    `env` overrides or adds variables (strings); `upstream` (a tests.upstream_server.
    UpstreamServer) sets OPENAI_BASE_URL and OPENAI_API_KEY. The database defaults to
    SQLite inside the data directory; pass `database_url` for PostgreSQL and
    `redis_url` for the Redis channel layer (both needed to run several servers).
    `daphne_args` go on each server's daphne command line (`("--proxy-headers",)` behind nginx).
    The rest of the test run's environment passes through (TIKTOKEN_CACHE_DIR, so
    token counts work offline) except the app's own CHAT_/DJANGO_/OPENAI_ variables.
    """

    def __init__(
        self,
        root: Path,
        env: dict[str, str] | None = None,
        *,
        upstream=None,
        api_key: str = TEST_API_KEY,
        database_url: str | None = None,
        redis_url: str | None = None,
        daphne_args: tuple[str, ...] = (),
    ) -> None:
        self.root = Path(root)
        self.daphne_args = tuple(daphne_args)  # added to every server's command line
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'db.sqlite3'}"
        self.servers: list[LiveServer] = []
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(_OWN_PREFIXES)}
        self.env.update(
            {
                "CHAT_DATA_DIR": str(self.data_dir),
                "DATABASE_URL": self.database_url,
                "CHAT_MODEL": "gpt-4o-mini",
                # Off unless a test turns it on: a title request would take the next queued reply.
                "CHAT_MODEL_TITLES": "false",
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            }
        )
        if upstream is not None:
            self.env["OPENAI_BASE_URL"] = upstream.base_url
            self.env["OPENAI_API_KEY"] = api_key
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.env.update(env or {})

    # -- manage.py ----------------------------------------------------------------------
    def manage(self, *args: str, timeout: float = 60) -> str:
        """Run a manage.py command with the site's environment; its stdout, or ServerError."""
        try:
            done = subprocess.run(
                [sys.executable, "manage.py", *args],
                cwd=REPO,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"manage.py {args[0]} took over {timeout}s") from exc
        if done.returncode != 0:
            raise ServerError(f"manage.py {' '.join(args[:1])} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def migrate(self) -> None:
        self.manage("migrate", "--no-input", "-v", "0")

    def shell(self, code: str) -> object:
        """Run Python inside Django (manage.py shell); the code sets `result`, returned as JSON."""
        script = f"import json\nresult = None\n{code}\nprint('@@result@@' + json.dumps(result))"
        out = self.manage("shell", "-v", "0", "-c", script)
        for line in reversed(out.splitlines()):
            if line.startswith("@@result@@"):
                return json.loads(line.removeprefix("@@result@@"))
        raise ServerError(f"manage.py shell printed no result:\n{out}")

    def create_user(self, username: str, password: str) -> int:
        return self.shell(
            "from django.contrib.auth.models import User\n"
            f"result = User.objects.create_user({username!r}, password={password!r}).pk"
        )

    def create_conversation(self, username: str, **fields: str) -> int:
        return self.shell(
            "from chat.models import Conversation\n"
            "from django.contrib.auth.models import User\n"
            f"user = User.objects.get(username={username!r})\n"
            f"result = Conversation.objects.create(user=user, **{fields!r}).pk"
        )

    def session_cookie(self, username: str) -> str:
        """A signed-in session made without HTTP (what django.contrib.auth.login stores)."""
        return self.shell(
            "from django.conf import settings\n"
            "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY\n"
            "from django.contrib.auth.models import User\n"
            "from django.contrib.sessions.backends.db import SessionStore\n"
            f"user = User.objects.get(username={username!r})\n"
            "session = SessionStore()\n"
            "session[SESSION_KEY] = str(user.pk)\n"
            # The backend that signs users in: the model backend, not a throttle listed before it (axes).
            "session[BACKEND_SESSION_KEY] = next(b for b in settings.AUTHENTICATION_BACKENDS"
            " if not b.startswith('axes.'))\n"
            "session[HASH_SESSION_KEY] = user.get_session_auth_hash()\n"
            "session.save()\n"
            "result = session.session_key"
        )

    # -- the database, read directly ------------------------------------------------------
    def query(self, sql: str, *params) -> list[dict]:
        """Rows as dicts; write `%s` placeholders (turned into `?` for SQLite)."""
        url = urlparse(self.database_url)
        if url.scheme == "sqlite":
            with closing(sqlite3.connect(url.path, timeout=10)) as db:
                db.row_factory = sqlite3.Row
                return [dict(row) for row in db.execute(sql.replace("%s", "?"), params)]
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.database_url, row_factory=dict_row, connect_timeout=5) as db:
            return db.execute(sql, params).fetchall()

    def messages(self, conversation_id: int) -> list[dict]:
        return self.query(
            "SELECT * FROM chat_message WHERE conversation_id = %s ORDER BY id", conversation_id
        )

    def wait_for(self, check, timeout: float = 10, interval: float = 0.05):
        """Poll `check()` until it returns something truthy; that value, or AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still {value!r} after {timeout}s")
            time.sleep(interval)

    # -- processes --------------------------------------------------------------------
    def server(
        self,
        env: dict[str, str] | None = None,
        name: str | None = None,
        start: bool = True,
        before_start: str | None = None,
    ):
        """A daphne process for this site (started unless start=False); use it as a context manager.

        `before_start`: Python run in the server process before daphne starts (a test's
        simulated library change)."""
        server = LiveServer(
            self, env=env, name=name or f"daphne-{len(self.servers) + 1}", before_start=before_start
        )
        self.servers.append(server)
        if start:
            server.start()
        return server

    def start_servers(self, count: int, env: dict[str, str] | None = None) -> list[LiveServer]:
        """`count` daphne processes on this site, started side by side."""
        servers = [self.server(env, start=False) for _ in range(count)]
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready()
        return servers

    def stop(self) -> None:
        """Stop every server of the site: SIGTERM to all, then SIGKILL to any still up after 5 s."""
        for server in self.servers:
            if server.alive:
                server.process.terminate()
        for server in self.servers:
            server.stop()


class LiveServer:
    """One `daphne chatsite.asgi:application` process on 127.0.0.1 and a port of its own.

    The port is kept across `restart()`, so cookies, origins and URLs stay valid.
    Output of every run goes to `log_path` (appended).
    """

    def __init__(
        self,
        site: Site,
        env: dict[str, str] | None = None,
        name: str = "daphne",
        before_start: str | None = None,
    ) -> None:
        self.site = site
        self.before_start = before_start
        self.name = name
        self.env = {**site.env, **(env or {})}
        self.port = free_port()
        self.log_path = site.root / f"{name}.log"
        self.process: subprocess.Popen | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.origin + path

    def ws_url(self, conversation_id: int) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/{conversation_id}/"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 20) -> LiveServer:
        """Launch the process and wait until it accepts connections."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> LiveServer:
        """Start the process without waiting (launch several, then `wait_ready` each: faster)."""
        if self.alive:
            raise ServerError(f"{self.name} is already running")
        daphne = BIN / "daphne"
        command = [str(daphne)] if daphne.exists() else [sys.executable, "-m", "daphne"]
        if self.before_start:
            entry = "from daphne.cli import CommandLineInterface\nCommandLineInterface.entrypoint()"
            command = [sys.executable, "-c", f"{self.before_start}\n{entry}"]
        # As run.sh and docs/deploy.md run it: a storm of handshakes may take longer than 5 s.
        command += ["-b", "127.0.0.1", "-p", str(self.port), "--websocket_connect_timeout", "30"]
        command += [*self.site.daphne_args, "chatsite.asgi:application"]
        with open(self.log_path, "ab") as log:
            log.write(f"--- {self.name}: {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self, timeout: float = 20) -> LiveServer:
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port, timeout=0.2):
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerError(f"{self.name} exited with {code}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"{self.name} did not listen within {timeout}s:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10) -> int | None:
        """Send `sig` (default SIGKILL: a crash, no clean-up) and wait for the exit; the return code."""
        if not self.alive:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), SIGKILL if it does not exit in 5 seconds."""
        self.kill(signal.SIGTERM, timeout=5)

    def restart(self, timeout: float = 20) -> LiveServer:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> LiveServer:
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- signing in ----------------------------------------------------------------------
    def login(self, username: str, password: str) -> str:
        """Sign in through the login form (CSRF token and all); the `sessionid` cookie value.

        Falls back to a session written by manage.py when the login page is not there.
        """
        with httpx.Client(base_url=self.origin, timeout=10, trust_env=False) as client:
            page = client.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            if page.status_code == 200 and token:
                answer = client.post(
                    "/accounts/login/",
                    data={"username": username, "password": password, "csrfmiddlewaretoken": token[1]},
                    headers={"Origin": self.origin, "Referer": self.url("/accounts/login/")},
                )
                if answer.status_code in (302, 303) and client.cookies.get("sessionid"):
                    return client.cookies["sessionid"]
                raise ServerError(f"signing in as {username} failed with HTTP {answer.status_code}")
        return self.site.session_cookie(username)

    def socket(
        self,
        conversation_id: int,
        cookie: str | None,
        origin: str | None = None,
        max_queue: int | None = None,
    ) -> ChatSocket:
        """`async with server.socket(id, cookie) as ws:`, or `ws = await server.socket(...).open()`.
        With `max_queue=1` the client stops reading from the network while a frame waits unread."""
        return ChatSocket(self.ws_url(conversation_id), cookie, origin or self.origin, max_queue)


class ChatSocket:
    """A chat websocket client that reads JSON frames with deadlines and keeps every frame it got."""

    def __init__(self, url: str, cookie: str | None, origin: str, max_queue: int | None = None) -> None:
        self.url = url
        self.max_queue = max_queue
        self.cookie = cookie
        self.origin = origin
        self.frames: list[dict] = []  # every frame received, in order
        self.connection = None
        # The streaming reply as a browser would show it: a resume replaces the text, a
        # delta whose seq is above the last one applied adds to it (docs/protocol.md).
        self.text = ""
        self.seq = 0
        self.decoder = FrameDecoder()

    async def open(self, timeout: float = 10) -> ChatSocket:
        """Connect; websockets.exceptions.InvalidStatus if the server refuses the handshake."""
        from websockets.asyncio.client import connect

        headers = {"Cookie": f"sessionid={self.cookie}"} if self.cookie else {}
        self.connection = await connect(
            self.url,
            origin=self.origin,
            additional_headers=headers,
            open_timeout=timeout,
            close_timeout=2,
            proxy=None,
            max_size=None,
            max_queue=self.max_queue,
        )
        return self

    async def __aenter__(self) -> ChatSocket:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def send(self, frame: dict) -> None:
        await self.connection.send(json.dumps(frame))

    async def recv(self, timeout: float = 10) -> dict:
        """The next frame; TimeoutError after `timeout` seconds, ConnectionClosed if the server closed."""
        async with asyncio.timeout(timeout):
            frame = self.decoder.decode(await self.connection.recv())
        self.frames.append(frame)
        if frame["type"] == "start":
            self.text, self.seq = "", 0
        elif frame["type"] == "resume":
            self.text, self.seq = frame["content"], frame["seq"]
        elif frame["type"] == "delta" and frame["seq"] > self.seq:
            self.text, self.seq = self.text + frame.get("content", ""), frame["seq"]
        return frame

    async def frames_until(self, kind: str, timeout: float = 10) -> list[dict]:
        """Frames received up to and including the first of type `kind`, within `timeout` in all."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frames.append(await self.recv(timeout))
                if frames[-1]["type"] == kind:
                    return frames

    async def until_text(self, text: str, timeout: float = 10) -> list[dict]:
        """Frames received until the reply shown so far (`self.text`) starts with `text`."""
        frames = []
        async with asyncio.timeout(timeout):
            while not self.text.startswith(text):
                frames.append(await self.recv(timeout))
        return frames

    async def nothing_for(self, seconds: float) -> bool:
        """True when no frame arrives for `seconds` (a frame that does is kept in `frames`)."""
        try:
            await self.recv(seconds)
        except TimeoutError:
            return True
        return False

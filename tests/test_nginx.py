"""Two daphne workers on PostgreSQL + Redis behind a real nginx, configured as docs/deploy.md says.

The nginx configuration is read from docs/deploy.md (section 4) and changed only where a
test must: the upstream servers are this run's two workers, it listens on a free
loopback port without TLS, the port-80 redirect is left out, and every response names
the worker that served it (`X-Chat-Upstream: $upstream_addr`), so each test proves
which worker a tab reached instead of assuming it. nginx runs as the test user in
the foreground, with its pid, logs and temporary files in the test's directory, and
two worker processes of its own (as Debian's `auto` would on this machine), so the
balancing must hold across them. The workers run daphne with `--proxy-headers`, as
the systemd unit in docs/deploy.md does.

Skipped with the reason when nginx, PostgreSQL or Redis is not there.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import TEST_API_KEY
from tests.live_server import REPO, ChatSocket, free_port, port_open
from tests.services import (  # noqa: F401 (fixtures)
    ENV,
    PASSWORD,
    assert_exact,
    database_url,
    redis_url,
    services,
    text_of,
    upstream,
)
from tests.upstream_server import Reply, UpstreamServer, chat_chunks, held_reply, sse

pytestmark = pytest.mark.services

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def deploy_config() -> str:
    """The nginx block of docs/deploy.md's section 4, as a team copies it."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    section = doc.split("## 4. nginx", 1)[1]
    return re.search(r"```nginx\n(.*?)```", section, re.S)[1]


def config_for(workers: list[int], port: int, root: Path) -> str:
    """docs/deploy.md's configuration, pointed at this run's workers and port (see the module doc)."""
    config = deploy_config()
    servers = re.findall(r"^ +server 127\.0\.0\.1:\d+;\n", config, re.M)
    assert servers, "docs/deploy.md's upstream lists no `server 127.0.0.1:<port>;`"
    ours = "".join(f"    server 127.0.0.1:{worker};\n" for worker in workers)
    config = config.replace(servers[0], ours, 1)
    for line in servers[1:]:
        config = config.replace(line, "", 1)
    redirect = re.search(r"\nserver \{\n +listen 80;.*?\n\}\n", config, re.S)
    assert redirect, "docs/deploy.md has no port-80 server block"
    config = config.replace(redirect[0], "\n")
    listen = "    listen 443 ssl http2;\n"
    assert listen in config, "docs/deploy.md's server block does not `listen 443 ssl http2;`"
    config = config.replace(
        listen, f"    listen 127.0.0.1:{port};\n    add_header X-Chat-Upstream $upstream_addr always;\n"
    )
    config = re.sub(r"^ +ssl_certificate(_key)? .*\n", "", config, flags=re.M)
    temp = "\n".join(
        f"    {kind}_temp_path {root}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Run as root (CI), nginx would hand its workers to `nobody`, who cannot enter the test's directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 2;\npid {root}/nginx.pid;\nerror_log {root}/error.log info;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {root}/access.log;\n{temp}\n{config}}}\n"
    )


class Nginx:
    """One nginx in the foreground on a port of its own, configured by `config_for`."""

    def __init__(self, root: Path, port: int, workers: list[int]) -> None:
        self.root, self.port = root, port
        self.conf = root / "nginx.conf"
        self.conf.write_text(config_for(workers, port, root))
        self.origin = f"http://127.0.0.1:{port}"
        self.process = None

    def start(self, timeout: float = 10) -> "Nginx":
        check = subprocess.run(
            [NGINX, "-t", "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(self.conf)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, f"nginx -t refused the configuration:\n{check.stderr}"
        with open(self.root / "nginx.out", "ab") as out:
            self.process = subprocess.Popen(
                [NGINX, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(self.conf)]
                + ["-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"nginx did not listen on {self.port}:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_text(self) -> str:
        return "".join(
            path.read_text(errors="replace")
            for path in (self.root / "nginx.out", self.root / "error.log", self.root / "access.log")
            if path.exists()
        )

    def socket(self, conversation_id: int, cookie: str) -> ChatSocket:
        return ChatSocket(f"ws://127.0.0.1:{self.port}/ws/chat/{conversation_id}/", cookie, self.origin)

    def login(self, username: str, password: str) -> str:
        """Sign in through nginx with the login form, as a browser would; the `sessionid`."""
        with httpx.Client(base_url=self.origin, timeout=10, trust_env=False) as client:
            page = client.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert page.status_code == 200 and token, (page.status_code, page.text[:300])
            answer = client.post(
                "/accounts/login/",
                data={"username": username, "password": password, "csrfmiddlewaretoken": token[1]},
                headers={"Origin": self.origin, "Referer": f"{self.origin}/accounts/login/"},
            )
            assert answer.status_code == 302 and client.cookies.get("sessionid"), answer.status_code
            return client.cookies["sessionid"]


def worker_of(ws: ChatSocket, workers) -> object:
    """The worker that nginx gave this socket to (the last address tried, if it retried)."""
    reached = ws.connection.response.headers["X-Chat-Upstream"].split(",")[-1].strip()
    [worker] = [w for w in workers if reached == f"127.0.0.1:{w.port}"]
    return worker


@pytest.fixture(scope="module")
def nginx_binary():
    if not Path(NGINX).exists():
        pytest.skip(f"nginx is not installed ({NGINX}; Debian: apt-get install nginx)")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, nginx_binary, upstream, database_url, redis_url):  # noqa: F811
    """nginx on a free port in front of two workers; (nginx, site, workers, cookie)."""
    from tests.live_server import Site

    root = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = Site(
        root,
        upstream=upstream,
        database_url=database_url,
        redis_url=redis_url,
        daphne_args=("--proxy-headers",),
        # nginx passes Host without the port ($host): the public origin is listed, as deploy.md says.
        env={
            **ENV,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DJANGO_CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{port}",
        },
    )
    site.migrate()
    site.create_user("alice", PASSWORD)
    workers = site.start_servers(2)
    nginx = Nginx(root, port, [w.port for w in workers])
    try:
        nginx.start()
        yield nginx, site, workers, nginx.login("alice", PASSWORD)
    finally:
        nginx.stop()
        site.stop()
        for log in [nginx.log_text(), *(w.log_text() for w in workers)]:
            assert TEST_API_KEY not in log


def test_the_health_check_answers_through_nginx(deployment):
    nginx, _, _, _ = deployment
    answer = httpx.get(f"{nginx.origin}/healthz", timeout=10, trust_env=False)
    assert answer.status_code == 200, answer.text
    assert answer.json()["ok"] is True


async def test_a_reply_started_on_one_worker_is_watched_resumed_and_stopped_through_the_other(
    deployment, upstream
):
    nginx, site, workers, cookie = deployment
    conversation_id = site.create_conversation("alice")
    held, release = held_reply(["Kept ", "so far"], [" never sent"])
    upstream.queue(held)
    try:
        async with (
            nginx.socket(conversation_id, cookie) as first,
            nginx.socket(conversation_id, cookie) as second,
        ):
            a, b = worker_of(first, workers), worker_of(second, workers)
            assert a is not b, "nginx gave both tabs of the conversation to one worker"
            await first.send({"type": "send", "content": "Go"})
            start = (await second.frames_until("start"))[-1]
            assert start["user_message"]["content"] == "Go"
            await second.until_text("Kept so far")  # deltas relayed from A to B, live
            await second.close()

            async with nginx.socket(conversation_id, cookie) as again:  # the tab reconnects
                assert worker_of(again, workers) is b
                resume = await again.recv()
                assert (resume["type"], resume["message_id"], resume["content"]) == (
                    "resume",
                    start["message_id"],
                    "Kept so far",
                )
                await again.send({"type": "stop"})
                for ws in (first, again):
                    done = (await ws.frames_until("done", timeout=5))[-1]
                    assert (done["status"], done["finish_reason"]) == ("cancelled", "cancelled")
            assert_exact(first.frames, "Kept so far")
    finally:
        release.set()
    reply = site.messages(conversation_id)[-1]
    assert (reply["content"], reply["status"]) == ("Kept so far", "cancelled")


async def test_a_worker_killed_mid_reply_leaves_it_interrupted_and_the_survivor_carries_on(
    deployment, upstream
):
    """Last in this module: worker A stays dead."""
    nginx, site, workers, cookie = deployment
    conversation_id = site.create_conversation("alice")
    held, release = held_reply(["Saved ", "text"], [" never sent"])
    upstream.queue(held, Reply(body=sse(*chat_chunks(["Carried on."]))))
    try:
        async with (
            nginx.socket(conversation_id, cookie) as on_a,
            nginx.socket(conversation_id, cookie) as on_b,
        ):
            a, b = worker_of(on_a, workers), worker_of(on_b, workers)
            assert a is not b
            await on_a.send({"type": "send", "content": "Go"})
            await on_b.until_text("Saved text")
            site.wait_for(lambda: site.messages(conversation_id)[-1]["content"] == "Saved text")
            a.kill()  # SIGKILL: no clean-up, the reply's lease just runs out
            with pytest.raises(ConnectionClosed):  # nginx closes the tab whose worker died
                await on_a.frames_until("done", timeout=10)

            frames = await on_b.frames_until("done", timeout=10)  # lease 2 s: B's sweep marks it
            error = next(f for f in frames if f["type"] == "error")
            assert (error["code"], frames[-1]["status"]) == ("interrupted", "interrupted")
            assert_exact(on_b.frames, "Saved text")

            async with nginx.socket(conversation_id, cookie) as reloaded:  # the dead worker's tab reloads
                assert worker_of(reloaded, workers) is b  # nginx skips the dead worker
                await reloaded.send({"type": "send", "content": "Again"})
                frames = await reloaded.frames_until("done")
                assert text_of(frames) == "Carried on." and frames[-1]["status"] == "finished"
            await on_b.frames_until("done")  # the other tab saw it too
    finally:
        release.set()
    assert [(m["content"], m["status"]) for m in site.messages(conversation_id)] == [
        ("Go", "finished"),
        ("Saved text", "interrupted"),
        ("Again", "finished"),
        ("Carried on.", "finished"),
    ]

"""The test provider as a process, and a loopback proxy in front of it that can spoil tokens.

    with ProviderServer(tmp_path) as provider, TokenProxy(provider.port) as proxy:
        provider.setup({"users": [...], "client": {...}})
        issuer = proxy.issuer            # what the chat site's CHAT_OIDC_ISSUER names
        proxy.mode = "tamper"            # the next token responses carry a broken signature

Everything (the browser, the chat site's requests) reaches the provider through the proxy,
so the issuer the provider names is the proxy's address. The proxy passes every request
through unchanged except the token endpoint's answer, whose id token it changes by `mode`:
"pass" (as is), "tamper" (signature altered) or "expire" (re-signed with the provider's own
key, expired an hour ago: only the time is wrong).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.live_server import BIN, REPO, ServerError, free_port, port_open

SETTINGS = "tests.oidc_provider.settings"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


def private_key_pem() -> str:
    """A fresh RSA key for the provider to sign with: made per test run, never stored."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class ProviderServer:
    """django-oauth-toolkit's provider (tests/oidc_provider) under daphne on a free port."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.key = private_key_pem()
        self.log_path = self.root / "provider.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_", "OIDC_"))},
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "OIDC_PROVIDER_DIR": str(self.root),
            "OIDC_RSA_PRIVATE_KEY": self.key,
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise ServerError(f"provider: django {args[0]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def setup(self, spec: dict) -> None:
        self.manage("oidc_setup", json.dumps(spec))

    def start(self, timeout: float = 20) -> ProviderServer:
        self.manage("migrate", "--no-input", "-v", "0")
        command = [
            str(BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "tests.oidc_provider.asgi:application",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the provider did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def spoil(id_token: str, mode: str, key_pem: str) -> str:
    if mode == "tamper":
        header, payload, signature = id_token.split(".")
        middle = len(signature) // 2  # not the last character, whose low bits may be padding
        swapped = "A" if signature[middle] != "A" else "B"
        return ".".join([header, payload, signature[:middle] + swapped + signature[middle + 1 :]])
    if mode == "expire":
        claims = jwt.decode(id_token, options={"verify_signature": False})
        now = int(time.time())
        claims.update(iat=now - 7200, exp=now - 3600, auth_time=now - 7200)
        kid = jwt.get_unverified_header(id_token)["kid"]
        return jwt.encode(claims, key_pem, algorithm="RS256", headers={"kid": kid})
    return id_token


class TokenProxy:
    """A loopback HTTP proxy to the provider that alters the token endpoint's id tokens."""

    def __init__(self, provider: ProviderServer) -> None:
        self.provider = provider
        self.mode = "pass"
        self.spoiled = 0  # token responses altered so far
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the provider logs requests itself
                pass

            def do_GET(self) -> None:
                self.forward()

            def do_POST(self) -> None:
                self.forward()

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.provider.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                content = answer.read()
                if self.path.split("?")[0] == "/o/token/" and answer.status == 200 and proxy.mode != "pass":
                    tokens = json.loads(content)
                    tokens["id_token"] = spoil(tokens["id_token"], proxy.mode, proxy.provider.key)
                    content = json.dumps(tokens).encode()
                    proxy.spoiled += 1
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
                upstream.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.origin}/o"

    def __enter__(self) -> TokenProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

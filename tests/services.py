"""What the tests that run several processes share: the machine's PostgreSQL and Redis
(a database and a Redis database number of each module's own, skipped with the reason
when either is not there), the settings those tests run with, and how a socket's view of
one reply is checked.

    from tests.services import ENV, PASSWORD, database_url, redis_url, services, upstream  # noqa: F401 (fixtures)
"""

import random
import secrets

import pytest

from tests.live_server import port_open
from tests.upstream_server import UpstreamServer

PASSWORD = "correct horse battery staple"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
# Leases short enough that a dead process is noticed within a few seconds.
ENV = {"CHAT_CHECKPOINT_INTERVAL": "0.3", "CHAT_LEASE_SECONDS": "2", "CHAT_UPSTREAM_RETRIES": "0"}


@pytest.fixture(scope="module")
def services():
    missing = [
        name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not port_open("127.0.0.1", port)
    ]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not reachable on 127.0.0.1 (needed to run two processes)")


@pytest.fixture(scope="module")
def database_url(services):
    import psycopg

    name = f"chat_test_{secrets.token_hex(6)}"
    admin = None
    for maintenance in ("test", "postgres"):
        try:
            admin = psycopg.connect(f"{POSTGRES}/{maintenance}", autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError as exc:
            reason = exc
    if admin is None:
        pytest.skip(f"cannot connect to PostgreSQL as postgres: {reason}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{POSTGRES}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def redis_url(services):
    import redis

    for number in random.sample(range(1, 16), 15):
        client = redis.Redis.from_url(f"{REDIS}/{number}", socket_timeout=5)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        pytest.skip("no empty Redis database number (1-15) to run in")
    try:
        yield f"{REDIS}/{number}"
    finally:
        client.flushdb()  # only this run's channel-layer keys: the database was empty
        client.close()


@pytest.fixture(scope="module")
def upstream():
    server = UpstreamServer()
    try:
        yield server
    finally:
        server.close()


def deltas(frames):
    return [f for f in frames if f["type"] == "delta"]


def text_of(frames):
    return "".join(f.get("content", "") for f in deltas(frames))


def assert_exact(frames, text):
    """A socket's view of one reply: an optional resume, then deltas with growing seqs, no gap."""
    shown, last_seq = "", 0
    for f in frames:
        if f["type"] == "resume":
            assert f["seq"] >= last_seq
            shown, last_seq = f["content"], f["seq"]
        elif f["type"] == "delta":
            assert f["seq"] > last_seq, f"seq {f['seq']} after {last_seq}"
            shown, last_seq = shown + f["content"], f["seq"]
    assert shown == text

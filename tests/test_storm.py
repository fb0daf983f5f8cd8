"""A connection storm on the Redis channel layer: every tab reconnecting at once gets in (issue #15).

When a worker restarts, every tab it served reconnects within the same second. Each
connect joins two channel-layer groups; with redis-py's default pool (100 connections,
failing at once when they are all out) about half of 200 tabs were closed with 1011
("Too many connections"). Here 400 tabs open on one worker at once, each must get in and
then see its conversation's reply, streamed on its own worker or on the other one.

Needs the machine's PostgreSQL and Redis (skipped with the reason otherwise), like
tests/test_scale_out.py, whose fixtures this module shares.
"""

import asyncio

import pytest

from tests.live_server import Site
from tests.services import ENV, PASSWORD, database_url, redis_url, services, upstream  # noqa: F401
from tests.upstream_server import Reply, chat_chunks, sse

pytestmark = [pytest.mark.services, pytest.mark.slow]

TABS = 400
CONVERSATIONS = 8  # 50 tabs each; the first half reply on the storm's worker, the rest on the other
PIECES = ["Every ", "tab ", "got ", "in."]


@pytest.fixture(scope="module")
def storm_site(tmp_path_factory, upstream, database_url, redis_url):  # noqa: F811
    site = Site(
        tmp_path_factory.mktemp("storm"),
        upstream=upstream,
        database_url=database_url,
        redis_url=redis_url,
        env={**ENV, "CHAT_MAX_REPLIES_PER_USER": "0"},  # one user sends in all 8 at once
    )
    site.migrate()
    # One manage.py run for the user and its conversations (each run costs about a second).
    conversations = site.shell(
        "from chat.models import Conversation\n"
        "from django.contrib.auth.models import User\n"
        f"user = User.objects.create_user('alice', password={PASSWORD!r})\n"
        f"result = [Conversation.objects.create(user=user).pk for _ in range({CONVERSATIONS})]"
    )
    servers = site.start_servers(2)
    try:
        yield site, servers, conversations
    finally:
        site.stop()


async def _open_all(server, conversations: list[int], cookie: str) -> tuple[list, list]:
    """Open TABS sockets at once, spread over the conversations; (opened, failures)."""
    sockets = [server.socket(conversations[i % len(conversations)], cookie) for i in range(TABS)]
    results = await asyncio.gather(*(ws.open(timeout=60) for ws in sockets), return_exceptions=True)
    failures = [repr(result) for result in results if isinstance(result, BaseException)]
    return [
        ws for ws, result in zip(sockets, results, strict=True) if not isinstance(result, BaseException)
    ], failures


async def test_four_hundred_tabs_connecting_at_once_all_get_in_and_see_replies(storm_site, upstream):  # noqa: F811
    site, (worker, other), conversations = storm_site
    cookie = worker.login("alice", PASSWORD)

    opened, failures = await _open_all(worker, conversations, cookie)
    try:
        assert not failures, f"{len(failures)} of {TABS} tabs could not connect, e.g. {failures[:3]}"
        # A tab the server accepted and then closed (1011 in group_add after accept) shows
        # here: ping every tab and wait for its pong.
        for ws in opened:
            await ws.send({"type": "ping"})
        for ws in opened:
            assert (await ws.recv(timeout=30))["type"] == "pong"

        # A handful send: half on the storm's worker (its tabs follow locally), half on the
        # other (its frames reach the storm's tabs through the Redis groups they joined).
        full = "".join(PIECES)
        upstream.queue(*(Reply(body=sse(*chat_chunks(PIECES)), delay=0.02) for _ in conversations))
        senders = []
        for index, conversation_id in enumerate(conversations):
            if index < CONVERSATIONS // 2:
                senders.append(opened[index])  # tab i is on conversation i
            else:
                senders.append(await other.socket(conversation_id, cookie).open())
        await asyncio.gather(*(ws.send({"type": "send", "content": "Hello"}) for ws in senders))

        async def reply_seen(ws):
            frames = await ws.frames_until("done", timeout=60)
            return frames[-1]["status"], ws.text

        seen = await asyncio.gather(*(reply_seen(ws) for ws in opened), return_exceptions=True)
        missed = [
            (i % CONVERSATIONS, result) for i, result in enumerate(seen) if result != ("finished", full)
        ]
        assert not missed, (
            f"{len(missed)} of {len(opened)} tabs did not see their reply, (conversation, what), e.g. {missed[:3]}"
        )
        for ws in senders[CONVERSATIONS // 2 :]:
            await ws.close()
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    for conversation_id in conversations:
        assert [(m["content"], m["status"]) for m in site.messages(conversation_id)] == [
            ("Hello", "finished"),
            (full, "finished"),
        ]
    for server in (worker, other):
        assert "Too many connections" not in server.log_text()


async def test_a_worker_out_of_redis_connections_waits_for_one_then_names_the_setting(redis_url):  # noqa: F811
    from chat.layers import ChannelLayer, PoolExhausted

    layer = ChannelLayer(hosts=[{"address": redis_url}], max_connections=2, pool_timeout=0.2)
    pool = layer.connection(0).connection_pool
    held = [await pool.get_connection(), await pool.get_connection()]
    try:
        with pytest.raises(
            PoolExhausted, match="all 2 Redis connections .* raise CHAT_REDIS_MAX_CONNECTIONS"
        ):
            await layer.group_add("storm-group", "specific.a!b")
        joining = asyncio.create_task(layer.group_add("storm-group", "specific.a!b"))
        await pool.release(held.pop())  # a connection comes free: the waiting join takes it
        await asyncio.wait_for(joining, 10)
        members = await layer.connection(0).zrange(layer._group_key("storm-group"), 0, -1)
        assert members == [b"specific.a!b"]
        assert await layer.connection(0).ttl(layer._group_key("storm-group")) > 0  # and it expires
    finally:
        for connection in held:
            await pool.release(connection)
        await layer.flush()
        await layer.close_pools()

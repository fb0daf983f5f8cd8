"""Two daphne processes sharing PostgreSQL and Redis: one conversation, seen and steered from both.

Needs the machine's PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and
Redis (127.0.0.1:6379); skipped with the reason when either is not there. Each
run uses a database of its own (chat_test_<random>, dropped afterwards) and an
empty Redis database number, so runs never see each other's groups.
"""

import pytest

from tests.conftest import TEST_API_KEY
from tests.live_server import Site
from tests.services import (  # noqa: F401 (fixtures)
    ENV,
    PASSWORD,
    assert_exact,
    database_url,
    deltas,
    redis_url,
    services,
    text_of,
    upstream,
)
from tests.upstream_server import Reply, UpstreamServer, chat_chunks, held_reply, sse

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def site(tmp_path_factory, upstream, database_url, redis_url):
    site = Site(
        tmp_path_factory.mktemp("scale-out"),
        upstream=upstream,
        database_url=database_url,
        redis_url=redis_url,
        env=ENV,
    )
    site.migrate()
    site.create_user("alice", PASSWORD)
    return site


@pytest.fixture
def servers(request, site):
    """Process A and process B, sharing the site's database and Redis (indirect param: more env)."""
    started = site.start_servers(2, env=getattr(request, "param", None))
    try:
        yield started
    finally:
        site.stop()
        for server in started:
            assert TEST_API_KEY not in server.log_text()


@pytest.fixture
def conversation_id(site):
    return site.create_conversation("alice")


@pytest.fixture
def cookie(servers):
    return servers[0].login("alice", PASSWORD)


async def test_a_reply_streamed_on_one_process_is_seen_live_on_the_other(
    site, upstream, servers, conversation_id, cookie
):
    a, b = servers
    pieces = [f"tok{i} " for i in range(50)]
    upstream.queue(Reply(body=sse(*chat_chunks(pieces)), delay=0.03))
    async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
        await on_a.send({"type": "send", "content": "Count"})
        start = (await on_b.frames_until("start"))[-1]
        assert start["user_message"]["content"] == "Count"  # the other process's tab sees the message
        await on_b.until_text("tok0 tok1 tok2 ")  # live, before the reply ends
        async with b.socket(conversation_id, cookie) as late:  # joins process B mid-stream
            resume = await late.recv()
            assert resume["type"] == "resume" and resume["message_id"] == start["message_id"]
            late_frames = [resume, *await late.frames_until("done")]
        local = await on_a.frames_until("done")
        await on_b.frames_until("done")
        remote = on_b.frames
    full = "".join(pieces)
    # Pieces that came while the turn was saved (the request goes out first, chat.early)
    # are read together: one delta each read, numbered without a gap.
    assert [f["seq"] for f in deltas(local)] == list(range(1, len(deltas(local)) + 1))
    assert text_of(local) == full
    assert_exact(remote, full)
    assert_exact(late_frames, full)
    for frames in (local, remote, late_frames):
        done = frames[-1]
        assert (done["type"], done["status"], done["message_id"]) == ("done", "finished", start["message_id"])
    assert len([f for f in remote if f["type"] == "done"]) == 1
    question, reply = site.messages(conversation_id)[-2:]
    assert (reply["content"], reply["status"], reply["lease_until"]) == (full, "finished", None)
    # Saved in one statement on PostgreSQL (chat.replies._insert_turn): the reply answers
    # the message and comes after it, as the branch reads (id order) expect.
    assert (question["content"], reply["parent_id"]) == ("Count", question["id"])


async def test_stop_from_the_other_process_cancels_the_reply(
    site, upstream, servers, conversation_id, cookie
):
    a, b = servers
    held, release = held_reply(["Kept ", "so far"], [" never sent"])
    upstream.queue(held)
    try:
        async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
            await on_a.send({"type": "send", "content": "Go"})
            await on_b.until_text("Kept so far")
            await on_b.send({"type": "stop"})
            for ws in (on_a, on_b):
                done = (await ws.frames_until("done", timeout=5))[-1]
                assert (done["status"], done["finish_reason"]) == ("cancelled", "cancelled")
            assert_exact(on_b.frames, "Kept so far")
    finally:
        release.set()
    reply = site.messages(conversation_id)[-1]
    assert (reply["content"], reply["status"]) == ("Kept so far", "cancelled")


async def test_send_on_the_other_process_while_a_reply_streams_is_busy(
    site, upstream, servers, conversation_id, cookie
):
    a, b = servers
    held, release = held_reply(["Busy "], ["writing."])
    upstream.queue(held)
    try:
        async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
            await on_a.send({"type": "send", "content": "First"})
            await on_b.until_text("Busy ")
            await on_b.send({"type": "send", "content": "Second"})
            error = (await on_b.frames_until("error"))[-1]
            assert (error["code"], error["message_id"]) == ("busy", None)
            release.set()
            assert (await on_a.frames_until("done"))[-1]["status"] == "finished"
            assert (await on_b.frames_until("done"))[-1]["status"] == "finished"
    finally:
        release.set()
    assert [(m["content"], m["status"]) for m in site.messages(conversation_id)] == [
        ("First", "finished"),
        ("Busy writing.", "finished"),
    ]


def close_inboxes(redis_url: str) -> int:
    """Close this run's Redis pub/sub connections (the fan-out inboxes), as a Redis restart or
    a dropped connection would; how many there were."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        ours = [c for c in client.client_list(_type="pubsub") if int(c["db"]) == db]
        for connection in ours:
            client.client_kill_filter(_id=connection["id"])
        return len(ours)
    finally:
        client.close()


async def test_a_tab_on_the_other_process_misses_nothing_when_its_inbox_loses_redis(
    site, upstream, servers, conversation_id, cookie, redis_url
):
    """Frames published while the other process's inbox reconnects reach nobody: the owner
    sees that and sends its tab a fresh resume, so the reply still shows whole and in order."""
    a, b = servers
    pieces = [f"tok{i} " for i in range(60)]
    upstream.queue(Reply(body=sse(*chat_chunks(pieces)), delay=0.03))
    async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
        await on_a.send({"type": "send", "content": "Count"})
        await on_b.until_text("tok0 tok1 tok2 ")
        assert close_inboxes(redis_url) == 1  # process B's: A has no tab elsewhere to follow
        missed_at = on_b.seq
        frames = await on_b.frames_until("done")
        await on_a.frames_until("done")
    full = "".join(pieces)
    assert_exact(on_b.frames, full)
    assert [f["seq"] for f in frames if f["type"] == "resume" and f["seq"] > missed_at]  # caught up whole
    assert frames[-1]["status"] == "finished" and len([f for f in on_b.frames if f["type"] == "done"]) == 1


async def test_a_killed_process_leaves_its_reply_interrupted_for_the_other(
    site, upstream, servers, conversation_id, cookie
):
    a, b = servers
    held, release = held_reply(["Saved ", "text"], [" never sent"])
    upstream.queue(held, Reply(body=sse(*chat_chunks(["Carried on."]))))
    try:
        async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
            await on_a.send({"type": "send", "content": "Go"})
            await on_b.until_text("Saved text")
            site.wait_for(lambda: site.messages(conversation_id)[-1]["content"] == "Saved text")
            a.kill()
            late = await b.socket(conversation_id, cookie).open()  # a tab reloaded after the crash
            frames = await on_b.frames_until("done", timeout=8)  # lease 2 s, checked every 0.6 s
            error = next(f for f in frames if f["type"] == "error")
            assert (error["code"], frames[-1]["status"], frames[-1]["finish_reason"]) == (
                "interrupted",
                "interrupted",
                "interrupted",
            )
            assert_exact(on_b.frames, "Saved text")
            late_frames = await late.frames_until("done", timeout=8)
            assert [f["type"] for f in late_frames] == ["resume", "error", "done"]
            assert late.text == "Saved text" and late_frames[-1]["status"] == "interrupted"
            await late.close()

            await on_b.send({"type": "send", "content": "Again"})  # process B carries the conversation on
            frames = await on_b.frames_until("done")
            assert text_of(frames) == "Carried on." and frames[-1]["status"] == "finished"
    finally:
        release.set()
    assert [(m["content"], m["status"]) for m in site.messages(conversation_id)] == [
        ("Go", "finished"),
        ("Saved text", "interrupted"),
        ("Again", "finished"),
        ("Carried on.", "finished"),
    ]


@pytest.mark.parametrize("servers", [{"CHAT_CHECKPOINT_INTERVAL": "0.05"}], indirect=True)
async def test_each_reply_ends_once_on_the_other_process(site, upstream, servers, conversation_id, cookie):
    """The other process's socket polls the database in case the owner died; a reply that
    ends while it polls must still end once there: no second `done`, no `resume` after it
    (a browser would show the reply as streaming again, with nothing left to end it)."""
    a, b = servers
    count = 15
    upstream.queue(*[Reply(body=sse(*chat_chunks([f"r{i}", " ok"])), delay=0.04) for i in range(count)])
    async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
        for i in range(count):
            await on_a.send({"type": "send", "content": f"message {i}"})
            await on_a.frames_until("done")
            await on_b.frames_until("done")
        while not await on_b.nothing_for(0.5):  # stragglers are kept in on_b.frames
            pass
    ends = {}
    for f in on_b.frames:
        if f["type"] in ("resume", "delta", "done") and f["message_id"] in ends:
            raise AssertionError(f"{f['type']} after the done of reply {f['message_id']}")
        if f["type"] == "done":
            ends[f["message_id"]] = f
    assert len(ends) == count


@pytest.mark.parametrize("servers", [{"CHAT_MAX_REPLIES_PER_USER": "1"}], indirect=True)
async def test_the_reply_cap_holds_across_processes(site, upstream, servers, cookie):
    """Each process sees only its own replies in memory; the cap is counted in the database."""
    a, b = servers
    first, second = site.create_conversation("alice"), site.create_conversation("alice")
    held, release = held_reply(["Still "], ["writing."])
    upstream.queue(held)
    try:
        async with a.socket(first, cookie) as on_a, b.socket(second, cookie) as on_b:
            await on_a.send({"type": "send", "content": "Long one"})
            await on_a.until_text("Still ")
            await on_b.send({"type": "send", "content": "And another"})
            error = await on_b.recv()
            assert (error["type"], error["code"], error["message_id"]) == ("error", "too_many_replies", None)
            assert site.messages(second) == []
            release.set()
            await on_a.frames_until("done")
            upstream.queue(Reply(body=sse(*chat_chunks(["Now."]))))
            await on_b.send({"type": "send", "content": "And another"})
            assert (await on_b.frames_until("done"))[-1]["status"] == "finished"
    finally:
        release.set()


def sign_out_over_http(server, cookie: str) -> None:
    """Sign out through the real form (CSRF token and all), as a browser on `server` would."""
    import re

    import httpx

    with httpx.Client(base_url=server.origin, timeout=10, trust_env=False) as client:
        client.cookies.set("sessionid", cookie)
        page = client.get("/")  # a new chat, with the sign-out form
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token, (page.status_code, page.headers, page.text[:300])
        answer = client.post(
            "/accounts/logout/",
            data={"csrfmiddlewaretoken": token[1]},
            headers={"Origin": server.origin, "Referer": server.url("/")},
        )
        assert answer.status_code == 302, answer.text


async def test_signing_out_on_one_process_closes_the_sessions_socket_on_the_other(
    site, servers, conversation_id, cookie
):
    from websockets.exceptions import ConnectionClosed

    from chat.signout import SIGNED_OUT

    a, b = servers
    other_session = a.login("alice", PASSWORD)
    async with (
        a.socket(conversation_id, cookie) as signed_out,
        a.socket(conversation_id, other_session) as kept,
    ):
        sign_out_over_http(b, cookie)
        error = await signed_out.recv(timeout=5)
        assert (error["type"], error["code"]) == ("error", "signed_out")
        with pytest.raises(ConnectionClosed) as closed:
            await signed_out.recv(timeout=5)
        assert closed.value.rcvd.code == SIGNED_OUT
        await kept.send({"type": "ping"})
        assert await kept.recv(timeout=5) == {"type": "pong"}


async def test_a_version_chosen_on_one_process_is_shown_once_on_both_and_the_next_send_follows_it(
    site, upstream, servers, conversation_id, cookie
):
    """Issue #14: a `switch` reaches every tab on the conversation, on any process, once."""
    a, b = servers
    upstream.queue(*(Reply(body=sse(*chat_chunks([text]))) for text in ("First.", "Second.", "Sure.")))
    async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
        await on_a.send({"type": "send", "content": "Q"})
        first = (await on_a.frames_until("done"))[-1]["message_id"]
        await on_b.frames_until("done")
        await on_b.send({"type": "regenerate"})
        for ws in (on_a, on_b):
            assert (await ws.frames_until("done"))[-1]["status"] == "finished"
        await on_b.send({"type": "switch", "message_id": first, "id": "back"})
        for ws in (on_a, on_b):
            branch = (await ws.frames_until("branch"))[-1]
            assert branch == {"type": "branch", "message_id": first, "request_id": "back"}
        await on_a.send({"type": "send", "content": "Really?"})
        for ws in (on_a, on_b):
            await ws.frames_until("done")
            assert [f["type"] for f in ws.frames].count("branch") == 1
    assert upstream.requests[-1]["json"]["messages"] == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "Really?"},
    ]
    shown = [(m["content"], m["superseded"]) for m in site.messages(conversation_id)]
    assert shown == [("Q", False), ("First.", False), ("Second.", True), ("Really?", False), ("Sure.", False)]

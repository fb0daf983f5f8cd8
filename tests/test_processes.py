"""Fault injection against a real daphne process: kills, reconnects, stalls, secrets.

Each test starts its own server (tests/live_server.py) on a fresh SQLite site and
a loopback upstream, and checks what a user's socket shows and what the database
keeps.
"""

import asyncio
import json
import signal
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import TEST_API_KEY
from tests.live_server import Site
from tests.upstream_server import Reply, chat_chunks, held_reply, sse

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
FAST_CHECKPOINTS = {
    "CHAT_CHECKPOINT_INTERVAL": "0.2",
    "CHAT_LEASE_SECONDS": "2",
    "CHAT_UPSTREAM_RETRIES": "0",
}


@pytest.fixture
def site(tmp_path, upstream):
    site = Site(tmp_path, upstream=upstream, env=FAST_CHECKPOINTS)
    site.migrate()
    site.create_user("alice", PASSWORD)
    site.conversation_id = site.create_conversation("alice")
    try:
        yield site
    finally:
        site.stop()
    for server in site.servers:  # whatever a test did, the key never reached a log
        assert TEST_API_KEY not in server.log_text(), f"the API key is in {server.log_path}"


def reply_of(site, conversation_id):
    return [m for m in site.messages(conversation_id) if m["role"] == "assistant"][-1]


def deltas(frames):
    return [f for f in frames if f["type"] == "delta"]


def text_of(frames):
    return "".join(f.get("content", "") for f in deltas(frames))


def slow_reply(pieces: list[str], delay: float = 0.04) -> Reply:
    return Reply(body=sse(*chat_chunks(pieces)), delay=delay)


# -- the process dies -----------------------------------------------------------------------------
async def test_a_killed_server_leaves_the_reply_interrupted_and_the_chat_goes_on(site, upstream):
    held, release = held_reply(["Saved ", "before ", "the crash"], [" never sent"])
    upstream.queue(held, Reply(body=sse(*chat_chunks(["Back again."]))))
    server = site.server()
    cookie = server.login("alice", PASSWORD)
    conversation_id = site.conversation_id
    async with server.socket(conversation_id, cookie) as ws:
        await ws.send({"type": "send", "content": "Tell me something"})
        start = (await ws.frames_until("delta"))[0]
        site.wait_for(lambda: reply_of(site, conversation_id)["content"] == "Saved before the crash")
        server.kill()  # SIGKILL: no clean-up, no final write
        with pytest.raises(ConnectionClosed):
            await ws.recv(timeout=5)
    release.set()

    user, reply = site.messages(conversation_id)
    assert (user["role"], user["content"]) == ("user", "Tell me something")
    assert (reply["id"], reply["status"]) == (start["message_id"], "streaming")  # as the crash left it

    server.restart()
    async with server.socket(conversation_id, cookie) as ws:
        # Connecting sweeps the dead reply, and the socket shows how it ended (the page, drawn
        # before, may show it streaming): its saved text, the error, then done.
        frames = await ws.frames_until("done")
        assert [f["type"] for f in frames] == ["resume", "error", "done"]
        assert ws.text == "Saved before the crash" and frames[1]["code"] == "interrupted"
        assert (frames[-1]["status"], frames[-1]["finish_reason"]) == ("interrupted", "interrupted")
        assert await ws.nothing_for(0.3)
        reply = reply_of(site, conversation_id)
        assert (reply["status"], reply["finish_reason"], reply["error_code"]) == (
            "interrupted",
            "interrupted",
            "interrupted",
        )
        assert reply["content"] == "Saved before the crash" and reply["lease_until"] is None

        await ws.send({"type": "send", "content": "Try again"})
        frames = await ws.frames_until("done")
    assert frames[0]["type"] == "start" and frames[0]["user_message"]["content"] == "Try again"
    assert text_of(frames) == "Back again." and frames[-1]["status"] == "finished"
    assert [(m["content"], m["status"]) for m in site.messages(conversation_id)] == [
        ("Tell me something", "finished"),
        ("Saved before the crash", "interrupted"),
        ("Try again", "finished"),
        ("Back again.", "finished"),
    ]
    # The history sent upstream keeps the interrupted text.
    assert [m["content"] for m in upstream.requests[1]["json"]["messages"]] == [
        "Tell me something",
        "Saved before the crash",
        "Try again",
    ]


async def test_a_graceful_stop_saves_every_streaming_reply_text_before_exit(site, upstream):
    # Checkpoints far apart: without the flush on SIGTERM, none of this text would be saved.
    held, release = held_reply(["Shown ", "before ", "the stop"], [" never sent"])
    upstream.queue(held)
    server = site.server({"CHAT_CHECKPOINT_INTERVAL": "30", "CHAT_LEASE_SECONDS": "60"})
    cookie = server.login("alice", PASSWORD)
    conversation_id = site.conversation_id
    async with server.socket(conversation_id, cookie) as ws:
        await ws.send({"type": "send", "content": "Tell me something"})
        await ws.until_text("Shown before the stop")
        assert reply_of(site, conversation_id)["content"] == ""  # no checkpoint yet
        assert server.kill(signal.SIGTERM) == 0  # what `docker stop` or Ctrl+C sends
    release.set()
    reply = reply_of(site, conversation_id)
    assert (reply["status"], reply["content"]) == ("streaming", "Shown before the stop")
    assert "Saved streaming replies before stopping: 1" in server.log_text()

    server.restart()
    async with server.socket(conversation_id, cookie) as ws:
        frames = await ws.frames_until("done")
    assert ws.text == "Shown before the stop" and frames[-1]["status"] == "interrupted"


# -- sockets come and go ------------------------------------------------------------------------------
async def test_a_socket_reopened_mid_stream_resumes_without_gap_or_duplicate(site, upstream):
    pieces = [f"word{i} " for i in range(60)]
    upstream.queue(slow_reply(pieces, delay=0.03))
    server = site.server()
    cookie = server.login("alice", PASSWORD)
    async with server.socket(site.conversation_id, cookie) as ws:
        await ws.send({"type": "send", "content": "Go"})
        frames = [await ws.recv() for _ in range(4)]  # start and three deltas
    assert [f["seq"] for f in deltas(frames)] == [1, 2, 3]
    await asyncio.sleep(0.3)  # deltas flow while no socket is open

    async with server.socket(site.conversation_id, cookie) as ws:
        resume = await ws.recv()
        assert resume["type"] == "resume" and resume["message_id"] == frames[0]["message_id"]
        assert resume["seq"] > 3 and resume["content"] == "".join(pieces[: resume["seq"]])
        frames = await ws.frames_until("done")
    assert [f["seq"] for f in deltas(frames)] == list(range(resume["seq"] + 1, len(pieces) + 1))
    assert resume["content"] + text_of(frames) == "".join(pieces)
    assert frames[-1]["status"] == "finished"
    assert reply_of(site, site.conversation_id)["content"] == "".join(pieces)


async def test_deltas_of_every_frame_length_arrive_exact(site, upstream):
    """Text deltas are framed by the app itself (chat.backpressure.DirectText) below 64 KiB:
    each websocket length encoding, multibyte text, and a larger piece through daphne."""
    sizes = [2, 124, 125, 126, 127, 65_534, 65_535, 65_536, 70_000]  # payload bytes with the `+`
    pieces = ["é" * ((size - 1) // 2) + "x" * ((size - 1) % 2) for size in sizes]
    upstream.queue(slow_reply(pieces, delay=0.05))
    server = site.server()
    async with server.socket(site.conversation_id, server.login("alice", PASSWORD)) as ws:
        await ws.send({"type": "send", "content": "Go"})
        frames = await ws.frames_until("done")
    assert [f.get("content") for f in deltas(frames)] == pieces
    assert [f["seq"] for f in deltas(frames)] == list(range(1, len(pieces) + 1))
    assert reply_of(site, site.conversation_id)["content"] == "".join(pieces)


async def test_two_sockets_see_the_same_stream_and_either_can_stop_it(site, upstream):
    held, release = held_reply(["Kept ", "so far"], [" never sent"])
    upstream.queue(slow_reply(["One ", "two ", "three."]), held)
    server = site.server()
    cookie = server.login("alice", PASSWORD)
    async with (
        server.socket(site.conversation_id, cookie) as first,
        server.socket(site.conversation_id, cookie) as second,
    ):
        await first.send({"type": "send", "content": "Count"})
        seen = [await first.frames_until("done"), await second.frames_until("done")]
        assert seen[0] == seen[1]  # same frames, same order, same final state
        assert text_of(seen[0]) == "One two three." and seen[0][-1]["status"] == "finished"

        await first.send({"type": "send", "content": "Go on"})
        await second.frames_until("delta")
        await second.send({"type": "stop"})
        for ws in (first, second):
            done = (await ws.frames_until("done", timeout=5))[-1]
            assert (done["status"], done["finish_reason"]) == ("cancelled", "cancelled")
    release.set()
    reply = reply_of(site, site.conversation_id)
    assert (reply["content"], reply["status"]) == ("Kept so far", "cancelled")


# -- a silent upstream ---------------------------------------------------------------------------------
async def test_a_stalled_upstream_ends_with_a_timeout_and_keeps_the_partial_reply(site, upstream):
    upstream.queue(Reply(body=sse(*chat_chunks(["Half ", "done"], finish_reason=None), done=False), stall=8))
    server = site.server(env={"CHAT_UPSTREAM_IDLE_TIMEOUT": "1"})
    cookie = server.login("alice", PASSWORD)
    async with server.socket(site.conversation_id, cookie) as ws:
        await ws.send({"type": "send", "content": "Hi"})
        await ws.frames_until("delta")
        silent_since = time.monotonic()
        frames = await ws.frames_until("done", timeout=6)
    waited = time.monotonic() - silent_since
    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "upstream_timeout" and error["message_id"] == frames[-1]["message_id"]
    assert 0.5 < waited < 4
    assert frames[-1]["status"] == "failed"
    reply = reply_of(site, site.conversation_id)
    assert (reply["content"], reply["status"], reply["error_code"]) == (
        "Half done",
        "failed",
        "upstream_timeout",
    )


async def test_keep_alive_comments_longer_than_the_idle_timeout_do_not_cut_the_reply(site, upstream):
    events = sse(*chat_chunks(["Thinking", " hard", " then answering."]))
    keep_alives = [b": keep-alive\n\n"] * 8
    upstream.queue(Reply(body=[*events[:2], *keep_alives, *events[2:]], delay=0.2))  # 1.6 s without text
    server = site.server(env={"CHAT_UPSTREAM_IDLE_TIMEOUT": "1"})
    cookie = server.login("alice", PASSWORD)
    async with server.socket(site.conversation_id, cookie) as ws:
        await ws.send({"type": "send", "content": "Hi"})
        frames = await ws.frames_until("done", timeout=10)
    assert not [f for f in frames if f["type"] == "error"]
    assert text_of(frames) == "Thinking hard then answering." and frames[-1]["status"] == "finished"


# -- secrets ------------------------------------------------------------------------------------------------
async def test_the_api_key_reaches_neither_logs_nor_frames(site, upstream):
    json_headers = {"content-type": "application/json"}
    rejected = json.dumps({"error": {"message": f"Incorrect API key provided: {TEST_API_KEY}."}})
    mid_stream = {"error": {"message": f"Key {TEST_API_KEY} is over its quota", "code": "quota"}}
    upstream.queue(
        Reply(status=401, headers=json_headers, body=[rejected.encode()]),
        Reply(status=500, headers=json_headers, body=[rejected.encode()]),
        Reply(body=sse(*chat_chunks(["Some text"], finish_reason=None), mid_stream, done=False)),
    )
    server = site.server(env={"DJANGO_LOG_LEVEL": "DEBUG"})
    cookie = server.login("alice", PASSWORD)
    async with server.socket(site.conversation_id, cookie) as ws:
        codes = []
        for content in ("one", "two", "three"):
            await ws.send({"type": "send", "content": content})
            frames = await ws.frames_until("done")
            codes.append(next(f["code"] for f in frames if f["type"] == "error"))
    assert codes == ["upstream_auth", "upstream_unavailable", "upstream_error"]
    assert all(r["headers"]["authorization"] == f"Bearer {TEST_API_KEY}" for r in upstream.requests)
    assert TEST_API_KEY not in json.dumps(ws.frames)
    assert TEST_API_KEY not in json.dumps(site.messages(site.conversation_id), default=str)
    server.stop()
    log = server.log_text()
    assert "upstream_auth" in log or "rejected the API key" in log  # the failure is logged ...
    assert TEST_API_KEY not in log  # ... without the key


# -- a reader that stops reading -------------------------------------------------------------------
async def test_a_reader_that_stops_reading_is_caught_up_instead_of_buffered(site, upstream):
    """Daphne buffers whatever is sent to a socket whose reader stalled, without limit. The relay
    stops sending deltas to it past CHAT_SOCKET_BUFFER_BYTES and feeds it what it missed as it
    drains, in batches, then the end."""
    pieces = [f"{n:05d}" + "x" * 3994 + " " for n in range(4000)]  # 16 MB: more than the kernel buffers
    upstream.queue(Reply(body=sse(*chat_chunks(pieces))))
    server = site.server(env={"CHAT_SOCKET_BUFFER_BYTES": "65536"})
    cookie = server.login("alice", PASSWORD)
    conversation_id = site.conversation_id
    ws = await server.socket(conversation_id, cookie, max_queue=1).open()  # reads one frame, then stalls
    try:
        await ws.send({"type": "send", "content": "Write a lot"})
        finished = lambda: any(  # noqa: E731
            m["role"] == "assistant" and m["status"] == "finished" for m in site.messages(conversation_id)
        )
        site.wait_for(finished, timeout=60)  # the whole reply went by while the reader stalled
        frames = await ws.frames_until("done", timeout=60)  # now it reads again
    finally:
        await ws.close()
    assert ws.text == "".join(pieces)  # nothing lost, nothing doubled
    seqs = [f["seq"] for f in deltas(frames)]
    assert len(seqs) < len(pieces) / 2  # held back while it lagged, then sent in batches
    assert seqs == sorted(set(seqs))  # in order, none twice


# -- messages over daphne's size limit -----------------------------------------------------------------
async def test_a_message_over_the_size_limit_is_closed_with_1009_not_dropped(site, upstream):
    """daphne refuses messages over 1 MiB; the client must be told why (close code 1009,
    "message too big"), not see the connection vanish, on the first socket and later ones."""
    server = site.server()
    cookie = server.login("alice", PASSWORD)
    for _ in range(2):
        async with server.socket(site.conversation_id, cookie) as ws:
            await ws.send({"type": "send", "content": "x" * (1536 * 1024)})
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
        assert closed.value.rcvd.code == 1009
    assert site.messages(site.conversation_id) == [] and upstream.requests == []
    async with server.socket(site.conversation_id, cookie) as ws:  # the server goes on as before
        await ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}

"""The chat websocket through the real ASGI app, against a loopback upstream."""

import asyncio
import contextlib
import json
import sqlite3
import threading

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import connection

from chat import remote, tokens, worker
from chat.frames import text_delta
from chat.models import Conversation, Message
from chatsite.asgi import application
from tests.chat_sockets import (
    encoding_text,
    frames_until,
    needs_vocabulary,
    open_socket,
    receive_frame,
    text_of,
)
from tests.conftest import TEST_API_KEY
from tests.upstream_server import Reply, chat_chunks, held_reply, sse

pytestmark = pytest.mark.django_db(transaction=True)

SEED_PROMPT = "Count to 100, with a comma between each number and no newlines. E.g., 1, 2, 3, ..."


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password="x")


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice)


@database_sync_to_async
def messages_of(conversation):
    return list(Message.objects.filter(conversation=conversation).order_by("id"))


async def wait_for_status(conversation, status, timeout=5.0):
    async with asyncio.timeout(timeout):
        while True:
            reply = await Message.objects.filter(conversation=conversation, role="assistant").alast()
            if reply is not None and reply.status == status:
                return reply
            await asyncio.sleep(0.02)


# -- streaming ---------------------------------------------------------------------------
async def test_it_streams_text_before_the_upstream_finishes(use_upstream, conversation, alice):
    reply, release = held_reply(["Hel", "lo"], [" there", "!"])
    use_upstream.queue(reply)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    start = await receive_frame(socket)
    assert start["type"] == "start" and start["user_message"]["content"] == "Hi"
    first = await receive_frame(socket)
    assert first == {"type": "delta", "message_id": start["message_id"], "seq": 1, "content": "Hello"}
    release.set()
    frames = await frames_until(socket, "done")
    assert text_of([first, *frames]) == "Hello there!"
    assert [f["seq"] for f in frames if f["type"] == "delta"] == list(range(2, 2 + len(frames) - 1))
    done = frames[-1]
    assert done["status"] == "finished" and done["finish_reason"] == "stop"
    user_message, saved = await messages_of(conversation)
    assert (user_message.role, user_message.content) == ("user", "Hi")
    assert (saved.content, saved.status, saved.finish_reason) == ("Hello there!", "finished", "stop")
    assert saved.ttft_ms is not None and saved.duration_ms >= saved.ttft_ms
    await socket.disconnect()


async def test_plain_text_goes_out_as_text_deltas_one_byte_over_the_content(
    use_upstream, conversation, alice
):
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    pieces = [{"content": '{"a": 1}'}, {"reasoning_content": "think"}, {"content": "+1 é"}, {"content": ""}]
    chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in pieces]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    use_upstream.queue(Reply(body=sse(*chunks), delay=0.05))  # one network read per piece
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    start = json.loads(await socket.receive_from())
    raw = []
    while not raw or not raw[-1].startswith('{"type":"done"'):
        raw.append(await socket.receive_from(timeout=5))
    # Text that looks like JSON or starts with the marker is still just text after the `+`.
    assert raw[0] == '+{"a": 1}'
    assert json.loads(raw[1]) == {
        "type": "delta",
        "message_id": start["message_id"],
        "seq": 2,
        "content": "",
        "reasoning": "think",
    }
    assert raw[2] == "+" + "+1 é"
    saved = (await messages_of(conversation))[-1]
    assert (saved.content, saved.reasoning) == ('{"a": 1}+1 é', "think")
    await socket.disconnect()


@needs_vocabulary
async def test_it_saves_the_seed_token_counts(use_upstream, conversation, alice):
    answer = ", ".join(str(i) for i in range(1, 101)) + "."
    pieces = [answer[i : i + 7] for i in range(0, len(answer), 7)]
    usage = {"prompt_tokens": 36, "completion_tokens": 299, "total_tokens": 335}
    use_upstream.queue(Reply(body=sse(*chat_chunks(pieces, usage=usage))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": SEED_PROMPT})
    done = (await frames_until(socket, "done"))[-1]
    assert (done["prompt_tokens"], done["completion_tokens"]) == (36, 299)
    user_message, reply = await messages_of(conversation)
    assert user_message.token_count == 29
    assert (reply.prompt_tokens, reply.completion_tokens, reply.content) == (36, 299, answer)
    assert reply.usage == usage  # the provider's own figures, kept beside ours
    request = use_upstream.requests[0]["json"]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["messages"] == [{"role": "user", "content": SEED_PROMPT}]
    await socket.disconnect()


async def test_it_sends_the_history_and_system_prompt(use_upstream, conversation, alice):
    conversation.system_prompt = "Be brief."
    await conversation.asave()
    use_upstream.queue(Reply(body=sse(*chat_chunks(["One"]))), Reply(body=sse(*chat_chunks(["Two"]))))
    _, socket = await open_socket(conversation.id, alice)
    for content in ("first", "second"):
        await socket.send_json_to({"type": "send", "content": content})
        await frames_until(socket, "done")
    assert use_upstream.requests[1]["json"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "One"},
        {"role": "user", "content": "second"},
    ]
    await conversation.arefresh_from_db()
    assert conversation.title == "first"
    await socket.disconnect()


async def test_the_demo_model_streams_without_any_provider(settings, conversation, alice):
    settings.CHAT_DEMO, settings.CHAT_MODEL, settings.CHAT_DEMO_DELAY = True, "demo", 0.001
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Hello demo"})
    frames = await frames_until(socket, "done")
    deltas = [f for f in frames if f["type"] == "delta"]
    assert len(deltas) > 10  # it arrives piece by piece, not all at once
    assert "demo model" in text_of(frames) and "Hello demo" in text_of(frames)
    assert frames[-1]["status"] == "finished"
    _, reply = await messages_of(conversation)
    assert reply.content == text_of(frames) and reply.model == "demo"
    await socket.disconnect()


# -- who may connect ------------------------------------------------------------------------
async def test_it_refuses_anonymous_users(conversation):
    connected, _ = await open_socket(conversation.id, None)
    assert not connected


async def test_it_refuses_other_users_conversations(conversation, bob):
    connected, _ = await open_socket(conversation.id, bob)
    assert not connected
    assert await Message.objects.acount() == 0


async def test_it_refuses_unknown_conversations(alice):
    connected, _ = await open_socket(999999, alice)
    assert not connected


async def test_it_refuses_cross_origin_sockets(conversation, alice):
    connected, _ = await open_socket(conversation.id, alice, origin="https://evil.example")
    assert not connected


# -- stopping and failures ---------------------------------------------------------------------
@needs_vocabulary
async def test_stop_cancels_and_keeps_the_partial_reply(use_upstream, conversation, alice):
    reply, release = held_reply(["Partial ", "answer"], ["never sent"])
    use_upstream.queue(reply)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Go"})
    await frames_until(socket, "delta")
    await socket.send_json_to({"type": "stop"})
    frames = await frames_until(socket, "done", timeout=3)
    release.set()
    done = frames[-1]
    assert (done["status"], done["finish_reason"]) == ("cancelled", "cancelled")
    _, saved = await messages_of(conversation)
    assert (saved.content, saved.status, saved.finish_reason) == ("Partial answer", "cancelled", "cancelled")
    assert (
        saved.completion_tokens
        == tokens.count_tokens("Partial answer", "gpt-4o-mini")
        == done["completion_tokens"]
    )
    await socket.disconnect()


async def test_stop_with_nothing_streaming_says_so(conversation, alice):
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "stop"})
    assert (await receive_frame(socket))["code"] == "not_streaming"
    await socket.disconnect()


async def test_an_upstream_401_becomes_a_plain_error_and_the_key_stays_secret(
    use_upstream, conversation, alice
):
    body = json.dumps(
        {"error": {"message": f"Incorrect API key provided: {TEST_API_KEY}.", "code": "invalid_api_key"}}
    )
    use_upstream.queue(Reply(status=401, headers={"content-type": "application/json"}, body=[body.encode()]))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    frames = await frames_until(socket, "done")
    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "upstream_auth" and "API key" in error["detail"]
    assert TEST_API_KEY not in json.dumps(frames)
    user_message, reply = await messages_of(conversation)
    assert user_message.content == "Hi"  # saved even though the provider refused
    assert (reply.status, reply.error_code) == ("failed", "upstream_auth")
    assert TEST_API_KEY not in reply.error_detail
    await socket.disconnect()


async def test_a_cut_stream_keeps_the_partial_reply_marked_interrupted(use_upstream, conversation, alice):
    use_upstream.queue(
        Reply(body=sse(*chat_chunks(["Half an ", "answer"], finish_reason=None), done=False), cut=True)
    )
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    frames = await frames_until(socket, "done")
    assert next(f for f in frames if f["type"] == "error")["code"] == "upstream_interrupted"
    assert frames[-1]["status"] == "interrupted"
    _, reply = await messages_of(conversation)
    assert (reply.content, reply.status) == ("Half an answer", "interrupted")
    await socket.disconnect()


async def test_the_user_message_is_saved_before_any_of_the_reply_is_shown(use_upstream, conversation, alice):
    reply, release = held_reply([], ["late"])
    use_upstream.queue(reply)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Remember me"})
    await frames_until(socket, "start")
    saved = await messages_of(conversation)
    assert [(m.role, m.content, m.status) for m in saved] == [
        ("user", "Remember me", "finished"),
        ("assistant", "", "streaming"),
    ]
    release.set()
    await frames_until(socket, "done")
    await socket.disconnect()


async def test_the_start_frame_names_the_request_that_began_it_to_every_tab(
    use_upstream, conversation, alice
):
    """A tab knows its own reply by the id it sent, not by its text: two tabs sending the
    same words see which start is whose."""
    use_upstream.queue(*(Reply(body=sse(*chat_chunks(["Answer"]))) for _ in range(4)))
    _, mine = await open_socket(conversation.id, alice)
    _, other = await open_socket(conversation.id, alice)
    asks = [
        {"type": "send", "content": "Same words", "id": "tab-1:1"},
        {"type": "edit", "content": "Same words", "id": "x" * 64},
        {"type": "regenerate", "id": "tab-1:3"},
        {"type": "send", "content": "Same words"},  # no id: a client that does not match
    ]
    for ask in asks:
        await mine.send_json_to(ask)
        for socket in (mine, other):  # the start goes to every tab, id and all
            frames = await frames_until(socket, "done")
            assert frames[0]["type"] == "start" and frames[0]["request_id"] == ask.get("id")
    await mine.disconnect()
    await other.disconnect()


# -- bad frames -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('"send"', "bad_frame"),
        ('{"content": "hi"}', "bad_field"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "send"}', "bad_field"),
        ('{"type": "send", "content": 42}', "bad_field"),
        # A request id is a string of at most 64 characters (docs/protocol.md).
        ('{"type": "send", "content": "hi", "id": 7}', "bad_field"),
        (json.dumps({"type": "edit", "content": "hi", "id": "x" * 65}), "bad_field"),
        ('{"type": "regenerate", "id": ["a"]}', "bad_field"),
        ('{"type": "send", "content": "hi", "id": "\\ud83d"}', "bad_field"),
        ('{"type": "send", "content": "   "}', "empty_content"),
        (json.dumps({"type": "send", "content": "x" * 32001}), "content_too_long"),
        (json.dumps({"type": "send", "content": "é" * 200_000}), "frame_too_large"),
        # Nested deeper than the JSON parser's stack (RecursionError, not ValueError).
        ("[" * 100_000, "bad_json"),
        ('{"type": "send", "content": ' + '{"a":' * 40_000, "bad_json"),
    ],
)
async def test_bad_frames_get_a_specific_error_and_change_nothing(
    use_upstream, conversation, alice, raw, code
):
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_to(text_data=raw)
    error = await receive_frame(socket)
    assert (error["type"], error["code"], error["message_id"]) == ("error", code, None)
    await socket.send_json_to({"type": "ping"})
    assert await receive_frame(socket) == {"type": "pong"}  # still usable
    assert await Message.objects.acount() == 0
    assert use_upstream.requests == []
    await socket.disconnect()


# A browser (or a script) can put NUL and lone UTF-16 surrogates in JSON as escapes.
HOSTILE_JSON = '"Hi \\ud83d\\ude00, half \\ud83d, low \\udc00, nul \\u0000 end"'
HOSTILE_STORED = "Hi \U0001f600, half \ufffd, low \ufffd, nul \ufffd end"


@pytest.mark.parametrize("kind", ["send", "edit"])
async def test_nul_and_lone_surrogates_in_a_message_are_stored_as_replacement_characters(
    use_upstream, conversation, alice, kind
):
    use_upstream.queue(*(Reply(body=sse(*chat_chunks(["Fine"]))) for _ in range(2)))
    _, socket = await open_socket(conversation.id, alice)
    if kind == "edit":
        await socket.send_json_to({"type": "send", "content": "first"})
        await frames_until(socket, "done")
    await socket.send_to(text_data=f'{{"type": "{kind}", "content": {HOSTILE_JSON}}}')
    frames = await frames_until(socket, "done")
    # What the tab is shown is what is saved, sent upstream and used as the title.
    assert frames[0]["user_message"]["content"] == HOSTILE_STORED
    assert frames[-1]["status"] == "finished" and text_of(frames) == "Fine"
    user_message = (await messages_of(conversation))[-2]
    assert (user_message.content, user_message.superseded) == (HOSTILE_STORED, False)
    assert use_upstream.requests[-1]["json"]["messages"][-1]["content"] == HOSTILE_STORED
    if kind == "send":
        await conversation.arefresh_from_db()
        assert conversation.title == HOSTILE_STORED
    await socket.send_json_to({"type": "ping"})
    assert await receive_frame(socket) == {"type": "pong"}  # the socket is still open
    await socket.disconnect()


async def test_binary_frames_are_refused(conversation, alice):
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_to(bytes_data=b"\x00\x01")
    assert (await receive_frame(socket))["code"] == "bad_frame"
    await socket.disconnect()


async def test_a_flood_of_frames_is_throttled(settings, conversation, alice):
    settings.CHAT_FRAMES_PER_SECOND, settings.CHAT_FRAME_BURST = 1, 5
    _, socket = await open_socket(conversation.id, alice)
    for _ in range(20):
        await socket.send_json_to({"type": "ping"})
    received = []
    while not await socket.receive_nothing(timeout=0.2):
        received.append(await receive_frame(socket))
    assert received.count({"type": "pong"}) == 5
    assert [f["code"] for f in received if f["type"] == "error"] == ["rate_limited"]
    await socket.disconnect()


# -- one reply at a time, several tabs, closed tabs ------------------------------------------------
async def test_a_second_send_while_streaming_is_busy_and_harmless(use_upstream, conversation, alice):
    reply, release = held_reply(["One"], [" two"])
    use_upstream.queue(reply)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "first"})
    await frames_until(socket, "delta")
    await socket.send_json_to({"type": "send", "content": "second"})
    assert (await receive_frame(socket))["code"] == "busy"
    release.set()
    frames = await frames_until(socket, "done")
    assert text_of(frames) == " two" and frames[-1]["status"] == "finished"
    assert [m.content for m in await messages_of(conversation)] == ["first", "One two"]
    assert len(use_upstream.requests) == 1
    await socket.disconnect()


async def test_a_send_to_a_conversation_deleted_in_another_tab_is_refused_plainly(
    use_upstream, conversation, alice
):
    _, socket = await open_socket(conversation.id, alice)
    await conversation.adelete()  # the other tab's delete
    for command in ({"type": "send", "content": "Anyone there?"}, {"type": "regenerate"}):
        await socket.send_json_to(command)
        error = await receive_frame(socket, timeout=5)
        assert (error["type"], error["code"], error["message_id"]) == ("error", "conversation_deleted", None)
    await socket.send_json_to({"type": "ping"})
    assert await receive_frame(socket) == {"type": "pong"}  # not closed with 1011
    assert await Message.objects.acount() == 0 and use_upstream.requests == []
    await socket.disconnect()


@contextlib.contextmanager
def write_lock_held_elsewhere():
    """Another connection to the test database holding its write lock, as a long write,
    a backup or another process would: this process's writes fail with OperationalError."""
    other = sqlite3.connect(connection.settings_dict["NAME"], uri=True, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        other.execute(f"UPDATE {Conversation._meta.db_table} SET title = title")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="holds SQLite's write lock")
async def test_a_send_while_the_database_is_locked_is_refused_and_nothing_is_half_written(
    use_upstream, conversation, alice, caplog
):
    # The default: a request sent ahead of the failed save (chat.early) may take a reply too.
    use_upstream.default = Reply(body=sse(*chat_chunks(["Now it works"])))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "ping"})
    assert await receive_frame(socket) == {"type": "pong"}  # connected, done reading the database
    with write_lock_held_elsewhere():
        await socket.send_json_to({"type": "send", "content": "Hello?"})
        error = await receive_frame(socket, timeout=5)
    assert (error["type"], error["code"], error["message_id"]) == ("error", "database_error", None)
    assert "OperationalError" in caplog.text  # the log has the cause; the tab, plain words
    assert await Message.objects.acount() == 0
    await conversation.arefresh_from_db()
    assert conversation.title == ""
    await socket.send_json_to({"type": "send", "content": "Hello?"})  # the socket still works
    frames = await frames_until(socket, "done")
    assert text_of(frames) == "Now it works" and 1 <= len(use_upstream.requests) <= 2
    await socket.disconnect()


async def test_a_frame_a_tab_cannot_take_does_not_silence_that_tab(use_upstream, conversation, alice, caplog):
    reply, release = held_reply(["Before"], [" after"])
    use_upstream.queue(reply, Reply(body=sse(*chat_chunks(["Next reply"]))))
    _, socket = await open_socket(conversation.id, alice, app=encoding_text(application))
    await socket.send_json_to({"type": "send", "content": "Hi"})
    await frames_until(socket, "delta")
    # A frame no server can encode (a lone surrogate), as a bug or text that got past
    # chat.text would make: the send fails, but not because the connection did.
    await worker.current().watchers.send(conversation.id, text_delta("\ud83d"))
    release.set()
    frames = await frames_until(socket, "done")  # the tab still follows the reply ...
    assert text_of(frames) == " after" and frames[-1]["status"] == "finished"
    await socket.send_json_to({"type": "send", "content": "Again"})
    frames = await frames_until(socket, "done")  # ... and the next one
    assert text_of(frames) == "Next reply"
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)  # seen, with its traceback
    await socket.disconnect()


async def test_a_reply_finishes_and_is_saved_after_the_tab_closes(use_upstream, conversation, alice):
    reply, release = held_reply(["Still "], ["here", "."])
    use_upstream.queue(reply)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    await frames_until(socket, "delta")
    await socket.disconnect()
    release.set()
    saved = await wait_for_status(conversation, "finished")
    assert saved.content == "Still here."


async def test_sends_arriving_together_all_stream_even_from_a_tab_closed_mid_send(use_upstream, alice):
    conversations = [await Conversation.objects.acreate(user=alice) for _ in range(4)]
    use_upstream.queue(*(Reply(body=sse(*chat_chunks(["Answer"]))) for _ in conversations))
    sockets = [(await open_socket(c.id, alice))[1] for c in conversations]
    database_free = threading.Event()
    busy = asyncio.create_task(database_sync_to_async(database_free.wait)())  # the database thread
    for socket in sockets:
        await socket.send_json_to({"type": "send", "content": "Question"})
    async with asyncio.timeout(5):
        while len(worker.current().turns.queued) < len(sockets):  # all waiting to be saved together
            await asyncio.sleep(0.01)
    with contextlib.suppress(TimeoutError):
        await sockets[-1].disconnect(timeout=0.05)  # gone while its send waits to be saved
    database_free.set()
    await busy
    for socket in sockets[:-1]:
        frames = await frames_until(socket, "done")
        assert frames[0]["type"] == "start" and text_of(frames) == "Answer"
        await socket.disconnect()
    saved = await wait_for_status(conversations[-1], "finished")
    assert saved.content == "Answer"


async def test_a_socket_opened_mid_stream_resumes_exactly(use_upstream, conversation, alice):
    reply, release = held_reply(["Alpha ", "beta "], ["gamma ", "delta"])
    use_upstream.queue(reply)
    _, first = await open_socket(conversation.id, alice)
    await first.send_json_to({"type": "send", "content": "Go"})
    await frames_until(first, "delta")
    _, second = await open_socket(conversation.id, alice)
    resume = await receive_frame(second)
    assert resume["type"] == "resume" and resume["content"] == "Alpha beta " and resume["seq"] == 1
    release.set()
    frames = await frames_until(second, "done")
    deltas = [f for f in frames if f["type"] == "delta"]
    assert all(f["seq"] > resume["seq"] for f in deltas)
    assert resume["content"] + text_of(frames) == "Alpha beta gamma delta"
    assert text_of(await frames_until(first, "done")) == "gamma delta"
    await first.disconnect()
    await second.disconnect()


async def test_stop_from_another_tab_stops_the_reply_for_both(use_upstream, conversation, alice):
    reply, release = held_reply(["Some"], [" more"])
    use_upstream.queue(reply)
    _, first = await open_socket(conversation.id, alice)
    _, second = await open_socket(conversation.id, alice)
    await first.send_json_to({"type": "send", "content": "Go"})
    start = (await frames_until(second, "start"))[-1]
    assert start["user_message"]["content"] == "Go"  # the other tab sees the message too
    await frames_until(second, "delta")
    await second.send_json_to({"type": "stop"})
    for socket in (first, second):
        assert (await frames_until(socket, "done"))[-1]["status"] == "cancelled"
    release.set()
    await first.disconnect()
    await second.disconnect()


async def test_regenerate_keeps_the_earlier_reply_as_a_version(use_upstream, conversation, alice):
    use_upstream.queue(
        Reply(body=sse(*chat_chunks(["First try"]))), Reply(body=sse(*chat_chunks(["Second try"])))
    )
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Question"})
    first_done = (await frames_until(socket, "done"))[-1]
    await socket.send_json_to({"type": "regenerate"})
    frames = await frames_until(socket, "done")
    assert frames[0]["type"] == "start" and frames[0]["replaces"] == first_done["message_id"]
    assert frames[0]["user_message"] is None
    assert text_of(frames) == "Second try"
    assert use_upstream.requests[1]["json"]["messages"] == [{"role": "user", "content": "Question"}]
    saved = await messages_of(conversation)
    assert [(m.content, m.superseded) for m in saved] == [
        ("Question", False),
        ("First try", True),
        ("Second try", False),
    ]
    await socket.disconnect()


async def test_regenerate_with_no_message_says_so(conversation, alice):
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "regenerate"})
    assert (await receive_frame(socket))["code"] == "nothing_to_regenerate"
    await socket.disconnect()


# -- crash safety -------------------------------------------------------------------------------------
async def test_streaming_text_is_checkpointed_about_once_a_second(
    use_upstream, settings, conversation, alice
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.1
    reply, release = held_reply(["Saved ", "early"], [" and late"])
    use_upstream.queue(reply)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Go"})
    await frames_until(socket, "delta")
    async with asyncio.timeout(3):
        while (
            await Message.objects.aget(conversation=conversation, role="assistant")
        ).content != "Saved early":
            await asyncio.sleep(0.05)
    streaming = await Message.objects.aget(conversation=conversation, role="assistant")
    assert streaming.status == "streaming" and streaming.seq == 1 and streaming.lease_until is not None
    release.set()
    await frames_until(socket, "done")
    await socket.disconnect()


async def test_a_reply_left_streaming_by_a_dead_process_is_marked_interrupted(conversation, alice):
    await Message.objects.acreate(conversation=conversation, role="user", content="Hi")
    await Message.objects.acreate(
        conversation=conversation, role="assistant", content="Saved before the crash", status="streaming"
    )
    _, socket = await open_socket(conversation.id, alice)
    # The page may have drawn it streaming: the socket shows how it ended.
    resume, error, done = [await receive_frame(socket) for _ in range(3)]
    assert (resume["type"], resume["content"]) == ("resume", "Saved before the crash")
    assert (error["code"], done["status"], done["finish_reason"]) == (
        "interrupted",
        "interrupted",
        "interrupted",
    )
    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    assert (reply.status, reply.finish_reason, reply.content) == (
        "interrupted",
        "interrupted",
        "Saved before the crash",
    )
    await socket.send_json_to({"type": "send", "content": "Carry on"})  # the conversation goes on
    assert (await receive_frame(socket))["type"] == "start"
    await socket.disconnect()


async def test_a_settings_change_applies_to_the_next_message_without_reconnecting(
    use_upstream, conversation, alice
):
    use_upstream.queue(Reply(body=sse(*chat_chunks(["One"]))))
    use_upstream.default = Reply(body=sse(*chat_chunks(["Two"])))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "first"})
    await frames_until(socket, "done")
    # As another worker process would change it: this process is not told (chat.early).
    await Conversation.objects.filter(pk=conversation.pk).aupdate(
        system_prompt="Answer in French.", model="gpt-4o"
    )
    await socket.send_json_to({"type": "send", "content": "second"})
    frames = await frames_until(socket, "done")
    assert text_of(frames) == "Two"
    request = use_upstream.requests[-1]["json"]
    assert request["model"] == "gpt-4o"
    assert request["messages"][0] == {"role": "system", "content": "Answer in French."}
    # A request sent ahead with the old settings, if it got out, was abandoned unread.
    assert [f["type"] for f in frames].count("start") == 1
    assert all(r["json"]["model"] == "gpt-4o-mini" for r in use_upstream.requests[1:-1])
    await socket.disconnect()


async def test_edit_resends_the_last_message_and_keeps_the_old_one_as_a_version(
    use_upstream, conversation, alice
):
    use_upstream.queue(
        Reply(body=sse(*chat_chunks(["About cats"]))), Reply(body=sse(*chat_chunks(["About dogs"])))
    )
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Tell me about cats"})
    first = await frames_until(socket, "done")
    await socket.send_json_to({"type": "edit", "content": "Tell me about dogs"})
    frames = await frames_until(socket, "done")
    start = frames[0]
    assert start["replaces_user"] == first[0]["user_message"]["id"]
    assert start["user_message"]["content"] == "Tell me about dogs"
    assert text_of(frames) == "About dogs"
    assert use_upstream.requests[1]["json"]["messages"] == [{"role": "user", "content": "Tell me about dogs"}]
    saved = await messages_of(conversation)
    assert [(m.content, m.superseded) for m in saved] == [
        ("Tell me about cats", True),
        ("About cats", True),
        ("Tell me about dogs", False),
        ("About dogs", False),
    ]
    await socket.send_json_to({"type": "edit", "content": ""})
    assert (await receive_frame(socket))["code"] == "empty_content"
    await socket.disconnect()


async def test_finished_markdown_blocks_are_sent_rendered_while_streaming(use_upstream, conversation, alice):
    reply, release = held_reply(["## Plan 🐍\n\n", "- one\n- two\n\n", "Still typ"], ["ing."])
    use_upstream.queue(reply)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Plan?"})
    frames = await frames_until(socket, "render")
    render = frames[-1]
    assert render["from"] == 0 and "<h2>Plan 🐍</h2>" in render["html"] and "<li>one</li>" in render["html"]
    covered = "## Plan 🐍\n\n- one\n- two\n\n"
    assert render["chars"] == len(covered.encode("utf-16-le")) // 2  # as the browser counts
    _, late = await open_socket(conversation.id, alice)  # a tab that joins now gets it after its resume
    joined = await frames_until(late, "render")
    assert [f["type"] for f in joined] == ["resume", "render"] and joined[1]["chars"] == render["chars"]
    release.set()
    await frames_until(socket, "done")
    await socket.disconnect()
    await late.disconnect()


async def test_a_reply_still_takes_stop_requests_from_other_processes_after_the_layer_fails_once(monkeypatch):
    """With several workers, a reply listens on the channel layer for stop requests from
    tabs on other workers; a Redis hiccup must not leave it deaf for the rest of the reply."""
    from chat.generation import Generation
    from chat.replies import Turn

    class FlakyLayer:  # Redis drops the connection once, then a tab elsewhere presses stop
        def __init__(self):
            self.calls = 0

        async def receive(self, channel):
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("Connection closed by server.")
            if self.calls == 2:
                return {"type": "chat.stop"}
            await asyncio.Event().wait()

    monkeypatch.setattr(remote, "get_channel_layer", FlakyLayer)
    reply = Generation(
        Turn(conversation_id=1, reply_id=1, target=None, prompt=[], prompt_tokens=None), worker.current()
    )
    tabs = reply.remote = remote.RemoteTabs(reply)
    tabs.channel = "specific.test!reply"
    listening = asyncio.create_task(tabs.listen())
    try:
        async with asyncio.timeout(5):
            while not reply.stop_requested:
                await asyncio.sleep(0.05)
    finally:
        listening.cancel()

"""The provider request sent while the turn is saved (chat.early), through the real ASGI app
and a real loopback upstream: it goes out before the turn's transaction commits, yet
nothing of the reply reaches a tab before the user's message is saved; a send that will
be refused asks the provider nothing; a save that fails cancels it; counts stay exact."""

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import connection

from chat import tokens, worker
from chat.models import Budget, Conversation, Message
from tests.chat_sockets import frames_until, needs_vocabulary, open_socket, receive_frame, text_of
from tests.test_consumers import write_lock_held_elsewhere
from tests.upstream_server import Reply, chat_chunks, held_reply, sse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice)


def answer(*pieces: str) -> Reply:
    return Reply(body=sse(*chat_chunks(list(pieces))))


async def ready_socket(conversation, user):
    """A socket that has opened and read what it reads on opening (a ping answered)."""
    _, socket = await open_socket(conversation.id, user)
    await socket.send_json_to({"type": "ping"})
    assert await receive_frame(socket) == {"type": "pong"}
    return socket


async def requests_reach(upstream, count: int, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while len(upstream.requests) < count:
            await asyncio.sleep(0.005)


class DatabaseThreadHeld:
    """The process's one database thread kept busy until release(): every save queues
    behind it, as behind a slow write, and no transaction of the app can commit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.task = asyncio.create_task(database_sync_to_async(self.event.wait)())

    async def release(self) -> None:
        self.event.set()
        await self.task


async def test_the_request_reaches_the_provider_before_the_turn_is_saved_and_the_reply_waits_for_it(
    use_upstream, conversation, alice
):
    use_upstream.queue(answer("Hello", " there"))
    socket = await ready_socket(conversation, alice)
    other_tab = await ready_socket(conversation, alice)
    held = DatabaseThreadHeld()
    await socket.send_json_to({"type": "send", "content": "Hi"})
    await requests_reach(use_upstream, 1)  # while the turn's save waits for the database
    assert use_upstream.requests[0]["json"]["messages"] == [{"role": "user", "content": "Hi"}]
    # The provider has answered; neither tab sees any of it before the message is saved.
    assert await socket.receive_nothing(timeout=0.2) and await other_tab.receive_nothing(timeout=0.05)
    await held.release()
    for tab in (socket, other_tab):
        frames = await frames_until(tab, "done")
        assert frames[0]["type"] == "start" and frames[0]["user_message"]["content"] == "Hi"
        assert text_of(frames) == "Hello there" and frames[-1]["status"] == "finished"
    user_message, reply = await database_sync_to_async(list)(Message.objects.order_by("id"))
    assert (user_message.content, reply.content) == ("Hi", "Hello there")
    assert len(use_upstream.requests) == 1
    await socket.disconnect()
    await other_tab.disconnect()


async def test_a_stream_cut_before_the_turn_is_saved_keeps_what_the_provider_sent(
    use_upstream, conversation, alice
):
    cut = Reply(body=sse(*chat_chunks(["Half an ", "answer"], finish_reason=None), done=False), cut=True)
    cut.written = threading.Event()
    use_upstream.queue(cut)
    socket = await ready_socket(conversation, alice)
    held = DatabaseThreadHeld()
    await socket.send_json_to({"type": "send", "content": "Hi"})
    assert await asyncio.to_thread(cut.written.wait, 5)  # sent and cut while the save waits
    await held.release()
    frames = await frames_until(socket, "done")
    assert text_of(frames) == "Half an answer" and frames[-1]["status"] == "interrupted"
    reply = await Message.objects.filter(role="assistant").alast()
    assert (reply.content, reply.status) == ("Half an answer", "interrupted")
    await socket.disconnect()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="holds SQLite's write lock")
async def test_a_save_that_fails_cancels_the_request_and_nothing_is_half_written(
    use_upstream, conversation, alice
):
    reply, _ = held_reply(["Never shown"], ["."])
    use_upstream.queue(reply, answer("Now it works"))
    socket = await ready_socket(conversation, alice)
    held = DatabaseThreadHeld()
    await socket.send_json_to({"type": "send", "content": "Hello?"})
    await requests_reach(use_upstream, 1)
    with write_lock_held_elsewhere():
        await held.release()
        error = await receive_frame(socket, timeout=5)
    assert (error["type"], error["code"], error["message_id"]) == ("error", "database_error", None)
    # The provider is told to stop (waited for off the loop, which does the closing).
    assert await asyncio.to_thread(use_upstream.requests[0]["disconnected"].wait, 5)
    assert await Message.objects.acount() == 0
    await socket.send_json_to({"type": "send", "content": "Hello?"})  # the next send works
    frames = await frames_until(socket, "done")
    assert text_of(frames) == "Now it works" and len(use_upstream.requests) == 2
    await socket.disconnect()


async def test_a_send_refused_as_busy_asks_the_provider_nothing(use_upstream, conversation, alice):
    reply, release = held_reply(["Still writing"], ["."])
    use_upstream.queue(reply)
    socket = await ready_socket(conversation, alice)
    await socket.send_json_to({"type": "send", "content": "First"})
    await frames_until(socket, "delta")
    await socket.send_json_to({"type": "send", "content": "Second"})
    error = await frames_until(socket, "error")
    assert error[-1]["code"] == "busy"
    release.set()
    await frames_until(socket, "done")
    assert len(use_upstream.requests) == 1
    await socket.disconnect()


async def test_a_send_over_the_reply_cap_asks_the_provider_nothing(use_upstream, alice, settings):
    settings.CHAT_MAX_REPLIES_PER_USER = 1
    first, second = await database_sync_to_async(
        lambda: [Conversation.objects.create(user=alice) for _ in range(2)]
    )()
    reply, release = held_reply(["Busy"], ["."])
    use_upstream.queue(reply)
    streaming = await ready_socket(first, alice)
    socket = await ready_socket(second, alice)
    await streaming.send_json_to({"type": "send", "content": "First"})
    await frames_until(streaming, "delta")
    await socket.send_json_to({"type": "send", "content": "Second"})
    error = await receive_frame(socket, timeout=5)
    assert (error["type"], error["code"]) == ("error", "too_many_replies")
    release.set()
    await frames_until(streaming, "done")
    assert len(use_upstream.requests) == 1
    await streaming.disconnect()
    await socket.disconnect()


async def test_a_send_over_budget_asks_the_provider_nothing(use_upstream, conversation, alice):
    socket = await ready_socket(conversation, alice)
    await Budget.objects.acreate(user=alice, sends_per_minute=0)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    error = await receive_frame(socket, timeout=5)
    assert (error["type"], error["code"]) == ("error", "send_rate_exceeded")
    assert await Message.objects.acount() == 0 and use_upstream.requests == []
    await socket.disconnect()


async def test_a_send_to_a_conversation_deleted_meanwhile_asks_the_provider_nothing(
    use_upstream, conversation, alice
):
    socket = await ready_socket(conversation, alice)
    await conversation.adelete()  # the other tab's delete
    await socket.send_json_to({"type": "send", "content": "Anyone there?"})
    error = await receive_frame(socket, timeout=5)
    assert (error["type"], error["code"]) == ("error", "conversation_deleted")
    assert use_upstream.requests == []
    await socket.disconnect()


def billed(messages: list[dict], model: str) -> int:
    """A prompt's tokens as the provider bills them, counted from its text alone."""
    counts = [tokens.count_tokens(m["content"], model) for m in messages]
    return tokens.count_messages([m["role"] for m in messages], counts, model) + tokens.REPLY_PRIMING


@needs_vocabulary
async def test_the_prompt_sent_ahead_is_the_one_saved_and_counted(use_upstream, conversation, alice):
    use_upstream.queue(answer("Paris."), answer("About two million."))
    socket = await ready_socket(conversation, alice)
    await socket.send_json_to({"type": "send", "content": "Capital of France?"})
    await frames_until(socket, "done")
    assert worker.current().known[conversation.id].rows  # the next prompt is known ahead
    await socket.send_json_to({"type": "send", "content": "How many people live there?"})
    await frames_until(socket, "done")
    sent = use_upstream.requests[1]["json"]["messages"]
    assert sent == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "How many people live there?"},
    ]
    reply = await Message.objects.filter(role="assistant").alast()
    assert reply.prompt_tokens == billed(sent, "gpt-4o-mini")
    assert len(use_upstream.requests) == 2
    await socket.disconnect()


@needs_vocabulary
async def test_a_branch_changed_behind_the_process_is_sent_as_saved(use_upstream, conversation, alice):
    """Another worker process added to the conversation: the request sent ahead asked the
    wrong thing, so it is abandoned unread and the saved turn's own request is sent."""
    use_upstream.queue(answer("Paris."))
    use_upstream.default = answer("Lyon is second.")
    socket = await ready_socket(conversation, alice)
    await socket.send_json_to({"type": "send", "content": "Capital of France?"})
    await frames_until(socket, "done")
    added = "And the next city?"
    await Message.objects.acreate(
        conversation=conversation,
        role="user",
        content=added,
        token_count=tokens.count_tokens(added, "gpt-4o-mini"),
    )
    await socket.send_json_to({"type": "send", "content": "Thanks"})
    frames = await frames_until(socket, "done")
    assert text_of(frames) == "Lyon is second."
    kept = use_upstream.requests[-1]["json"]["messages"]
    assert [m["content"] for m in kept] == ["Capital of France?", "Paris.", "And the next city?", "Thanks"]
    assert [f["type"] for f in frames].count("start") == 1
    assert all(len(r["json"]["messages"]) == 3 for r in use_upstream.requests[1:-1])  # the guess
    reply = await Message.objects.filter(role="assistant").alast()
    assert reply.content == "Lyon is second." and reply.prompt_tokens == billed(kept, "gpt-4o-mini")
    await socket.disconnect()

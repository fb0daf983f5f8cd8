"""Abuse limits on the send path (issue #12, section 5): replies per user, and token counting
kept off the database thread every socket shares. Through the real ASGI app."""

import threading

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from chat import tokens
from chat.models import Conversation, Message
from tests.chat_sockets import frames_until, needs_vocabulary, open_socket, receive_frame
from tests.upstream_server import Reply, chat_chunks, held_reply, sse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password="x")


async def message_count(conversation) -> int:
    return await Message.objects.filter(conversation=conversation).acount()


# -- replies per user -----------------------------------------------------------------------
async def test_a_user_at_the_reply_cap_is_refused_until_one_ends(use_upstream, settings, alice, bob):
    settings.CHAT_MAX_REPLIES_PER_USER = 2
    first, second, third = [await Conversation.objects.acreate(user=alice) for _ in range(3)]
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Earlier answer"]))))
    _, on_third = await open_socket(third.id, alice)
    await on_third.send_json_to({"type": "send", "content": "Earlier question"})
    await frames_until(on_third, "done")

    held = [held_reply(["Working"], [" on it"]) for _ in range(2)]
    use_upstream.queue(*(reply for reply, _ in held))
    sockets = []
    for conversation in (first, second):
        _, socket = await open_socket(conversation.id, alice)
        await socket.send_json_to({"type": "send", "content": "Long question"})
        assert (await receive_frame(socket))["type"] == "start"
        await frames_until(socket, "delta")  # the model was asked, and answers slowly
        sockets.append(socket)
    requests, before = len(use_upstream.requests), await message_count(third)

    # A send, an edit and a regenerate elsewhere: each refused, nothing written, no model called.
    for command in (
        {"type": "send", "content": "One more"},
        {"type": "edit", "content": "Earlier question, edited"},
        {"type": "regenerate"},
    ):
        await on_third.send_json_to(command)
        error = await receive_frame(on_third)
        assert (error["type"], error["code"], error["message_id"]) == ("error", "too_many_replies", None)
        assert "2 replies" in error["detail"]
    assert await message_count(third) == before
    assert len(use_upstream.requests) == requests

    # The cap is per user: bob sends while alice is at hers.
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Hi bob"]))))
    bobs = await Conversation.objects.acreate(user=bob)
    _, on_bobs = await open_socket(bobs.id, bob)
    await on_bobs.send_json_to({"type": "send", "content": "Hello"})
    assert (await frames_until(on_bobs, "done"))[-1]["status"] == "finished"

    # Once one of alice's replies ends, she may send again.
    held[0][1].set()
    await frames_until(sockets[0], "done")
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Now yes"]))))
    await on_third.send_json_to({"type": "send", "content": "One more"})
    frames = await frames_until(on_third, "done")
    assert frames[0]["type"] == "start" and frames[-1]["status"] == "finished"
    held[1][1].set()
    await frames_until(sockets[1], "done")
    for socket in (*sockets, on_third, on_bobs):
        await socket.disconnect()


# -- token counting off the database thread ---------------------------------------------------
@pytest.fixture
def counting_threads(monkeypatch):
    """Every tokens.count_tokens call, as (text, the thread it ran on)."""
    calls = []
    real = tokens.count_tokens

    def recording(text, *args, **kwargs):
        calls.append((text, threading.get_ident()))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(tokens, "count_tokens", recording)
    tokens.system_prompts.clear()
    yield calls
    tokens.system_prompts.clear()


@needs_vocabulary
async def test_a_send_counts_its_tokens_off_the_database_thread(use_upstream, alice, counting_threads):
    """The one database thread serves every socket of the process: a long message or system
    prompt encoded there held up other users' sends (30 such sends: 3 ms → 11 s)."""
    system = "You answer in verse. " * 1500  # 31,500 characters, within the limit
    content = "Tell me everything about databases. " * 800  # 28,800 characters
    conversation = await Conversation.objects.acreate(user=alice, system_prompt=system)
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Done"]))))
    database_thread = await database_sync_to_async(threading.get_ident)()
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": content})
    start = (await frames_until(socket, "done"))[0]
    counted = {text for text, _ in counting_threads}
    assert {content, system} <= counted  # both were counted ...
    assert [
        text[:20] for text, thread in counting_threads if thread == database_thread
    ] == []  # ... elsewhere
    user_message = await Message.objects.aget(conversation=conversation, role="user")
    assert user_message.token_count == tokens.count_tokens(content, "gpt-4o-mini")
    system_tokens = tokens.count_tokens(system, "gpt-4o-mini") + 4  # content + framing + role
    assert start["prompt_tokens"] == 3 + system_tokens + user_message.token_count + 4
    await socket.disconnect()


@needs_vocabulary
async def test_a_system_prompt_changed_after_the_socket_opened_is_counted_off_the_database_thread(
    use_upstream, alice, counting_threads
):
    conversation = await Conversation.objects.acreate(user=alice, system_prompt="Be brief.")
    use_upstream.queue(*(Reply(body=sse(*chat_chunks(["Ok"]))) for _ in range(2)))
    database_thread = await database_sync_to_async(threading.get_ident)()
    _, socket = await open_socket(conversation.id, alice)
    changed = "Answer as a pirate would. " * 1000  # the settings dialog, after the socket opened
    await Conversation.objects.filter(pk=conversation.pk).aupdate(system_prompt=changed)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    first = (await frames_until(socket, "done"))[0]
    assert use_upstream.requests[-1]["json"]["messages"][0] == {"role": "system", "content": changed}
    assert changed in {text for text, _ in counting_threads}
    assert [text[:20] for text, thread in counting_threads if thread == database_thread] == []
    assert first["prompt_tokens"] == 3 + tokens.count_tokens(changed, "gpt-4o-mini") + 4 + 1 + 4
    await socket.disconnect()


@needs_vocabulary
async def test_a_system_prompt_is_encoded_once_not_on_every_send(use_upstream, alice, counting_threads):
    system = "Reply in the style of a ship's log. " * 800
    conversations = [await Conversation.objects.acreate(user=alice, system_prompt=system) for _ in range(2)]
    use_upstream.queue(*(Reply(body=sse(*chat_chunks(["Logged"]))) for _ in range(3)))
    for conversation, content in (
        (conversations[0], "One"),
        (conversations[0], "Two"),
        (conversations[1], "Three"),
    ):
        _, socket = await open_socket(conversation.id, alice)
        await socket.send_json_to({"type": "send", "content": content})
        assert (await frames_until(socket, "done"))[-1]["status"] == "finished"
        await socket.disconnect()
    assert [text for text, _ in counting_threads].count(system) == 1

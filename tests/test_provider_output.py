"""Hostile or odd provider output through the real ASGI app: what is streamed is what is saved.

The client-level cases are in test_upstream.py; these follow the same bytes to the
browser's frames and the saved reply (issue #12).
"""

import json
import logging

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from chat.models import ChatModel, Conversation, Message, Provider
from tests.chat_sockets import frames_until, open_socket, text_of
from tests.upstream_server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

EMOJI = "\U0001f600"
REPLACEMENT = "\ufffd"


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice)


@database_sync_to_async
def saved_reply(conversation) -> Message:
    return Message.objects.filter(conversation=conversation, role="assistant").get()


async def send(conversation, user, content="Hi") -> list[dict]:
    _, socket = await open_socket(conversation.id, user)
    await socket.send_json_to({"type": "send", "content": content})
    frames = await frames_until(socket, "done")
    await socket.disconnect()
    return frames


def events(*data: str) -> list[bytes]:
    """Each event its own network read, written byte for byte (JSON escapes as the provider wrote them)."""
    return [f"data: {line}\n\n".encode() for line in data]


async def test_an_emoji_split_across_events_and_a_nul_are_streamed_and_saved_alike(
    use_upstream, conversation, alice
):
    use_upstream.queue(
        Reply(
            body=events(
                '{"choices":[{"index":0,"delta":{"content":"Smile \\ud83d"}}]}',
                '{"choices":[{"index":0,"delta":{"content":"\\ude00 and a n\\u0000l"}}]}',
                '{"choices":[{"index":0,"delta":{"reasoning_content":"hm\\u0000"}}]}',
                '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
                "[DONE]",
            )
        )
    )

    frames = await send(conversation, alice)

    streamed = text_of(frames)
    assert streamed == f"Smile {EMOJI} and a n{REPLACEMENT}l"
    assert frames[-1]["status"] == "finished"
    reply = await saved_reply(conversation)
    assert (reply.content, reply.reasoning, reply.status) == (streamed, f"hm{REPLACEMENT}", "finished")


async def test_a_half_held_back_when_the_stream_is_cut_is_saved_as_streamed(
    use_upstream, conversation, alice
):
    use_upstream.queue(
        Reply(body=events('{"choices":[{"index":0,"delta":{"content":"Cut after \\ud83d"}}]}'), cut=True)
    )

    frames = await send(conversation, alice)

    assert text_of(frames) == f"Cut after {REPLACEMENT}"
    reply = await saved_reply(conversation)
    assert (reply.content, reply.status) == (f"Cut after {REPLACEMENT}", "interrupted")


async def test_magistral_thinking_is_streamed_and_saved_as_reasoning(use_upstream, conversation, alice):
    use_upstream.queue(
        Reply(
            body=events(
                '{"choices":[{"index":0,"delta":{"content":[{"type":"thinking","thinking":'
                '[{"type":"text","text":"The user greets me."}]}]}}]}',
                '{"choices":[{"index":0,"delta":{"content":[{"type":"text","text":"Hello!"}]},'
                '"finish_reason":"stop"}]}',
                "[DONE]",
            )
        )
    )

    frames = await send(conversation, alice)

    assert "".join(f.get("reasoning", "") for f in frames if f["type"] == "delta") == "The user greets me."
    reply = await saved_reply(conversation)
    assert (reply.reasoning, reply.content) == ("The user greets me.", "Hello!")


GROQ_KEY = "gsk_Q9xVt2LmNcR4bY7sK1wPzE3hJ6uA8dFg0iOqTnXy"
AZURE_HEADER_SECRET = "3f9c2a7b8d1e4f60a5b2c9d8e7f6a1b0"


async def test_a_provider_error_quoting_its_secrets_reaches_neither_the_user_nor_the_log(
    upstream, alice, caplog
):
    source = await Provider.objects.acreate(
        name="azure-ish",
        base_url=upstream.base_url,
        api_key=GROQ_KEY,
        extra_headers={"api-key": AZURE_HEADER_SECRET},
    )
    await ChatModel.objects.acreate(provider=source, name="gpt-4o", is_default=True)
    conversation = await Conversation.objects.acreate(user=alice)
    quoted = f"Access denied for key {GROQ_KEY} with api-key {AZURE_HEADER_SECRET}."
    upstream.queue(
        Reply(
            status=401,
            headers={"content-type": "application/json"},
            body=[json.dumps({"error": {"message": quoted, "code": "401"}}).encode()],
        )
    )

    with caplog.at_level(logging.DEBUG):
        frames = await send(conversation, alice)

    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "upstream_auth" and "Access denied" in error["detail"]
    reply = await saved_reply(conversation)
    for secret in (GROQ_KEY, AZURE_HEADER_SECRET):
        assert secret not in json.dumps(frames)
        assert secret not in reply.error_detail
        assert secret not in caplog.text
    assert upstream.requests[0]["headers"]["api-key"] == AZURE_HEADER_SECRET

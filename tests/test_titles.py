"""A new chat titled by the model after its first reply (chat.titles), through the real ASGI
app and a loopback upstream that records each request byte for byte."""

import asyncio
import json
import logging
import threading

import pytest
from django.contrib.auth.models import User

from chat import titles, worker
from chat.models import Conversation
from tests.chat_sockets import frames_until, open_socket, receive_frame
from tests.conftest import TEST_API_KEY
from tests.upstream_server import Reply, chat_chunks, sse

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "How do I keep basil alive on a windowsill?\nIt keeps wilting."
ANSWER = "Water it when the top of the soil is dry, and give it six hours of sun."
FIRST_WORDS = "How do I keep basil alive on a windowsill?"


def whole(content: str, wait_for: threading.Event | None = None) -> Reply:
    """A non-streamed answer, as a provider sends one for `stream: false`."""
    body = {
        "id": "chatcmpl-title",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 60, "completion_tokens": 6, "total_tokens": 66},
    }
    return Reply(
        headers={"content-type": "application/json"}, body=[b"", json.dumps(body).encode()], wait_for=wait_for
    )


@pytest.fixture
def titling(settings, use_upstream):
    settings.CHAT_MODEL_TITLES = True
    return use_upstream


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def chat(alice):
    return Conversation.objects.create(user=alice, title=FIRST_WORDS)  # as the page creates it


async def first_exchange(chat, alice):
    """Send QUESTION, read up to `done`; the socket and the generation's task."""
    _, socket = await open_socket(chat.id, alice)
    await socket.send_json_to({"type": "send", "content": QUESTION})
    start = await receive_frame(socket)
    assert start["type"] == "start"
    task = worker.current().running[chat.id].task
    frames = await frames_until(socket, "done")
    return socket, task, frames


async def title_tasks():
    """Wait for the titling the finished replies started; their results."""
    return await asyncio.gather(*worker.current().background)


async def test_it_titles_a_new_chat_after_the_first_reply_without_delaying_done(titling, chat, alice):
    release = threading.Event()
    titling.queue(Reply(body=sse(*chat_chunks([ANSWER]))), whole('"Keeping Basil Alive Indoors."\n', release))
    socket, task, frames = await first_exchange(chat, alice)
    assert frames[-1]["status"] == "finished"  # `done` went out while the title request waits
    await task
    assert len(worker.current().background) == 1
    await asyncio.to_thread(release.set)

    frame = await receive_frame(socket, timeout=5)
    assert frame == {"type": "title", "conversation_id": chat.id, "title": "Keeping Basil Alive Indoors"}
    await chat.arefresh_from_db()
    assert chat.title == "Keeping Basil Alive Indoors"
    request = titling.requests[1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {TEST_API_KEY}"
    assert request["json"] == {
        "model": "gpt-4o-mini",
        "stream": False,
        "messages": [{"role": "user", "content": titles.PROMPT.format(question=QUESTION, answer=ANSWER)}],
        "max_tokens": titles.MAX_TOKENS,
    }
    await socket.disconnect()


async def test_a_title_model_can_be_named(titling, settings, chat, alice):
    settings.CHAT_TITLE_MODEL = "gpt-4.1-nano"
    titling.queue(Reply(body=sse(*chat_chunks([ANSWER]))), whole("Basil on a windowsill"))
    socket, task, _ = await first_exchange(chat, alice)
    await task
    assert await title_tasks() == ["Basil on a windowsill"]
    assert [r["json"]["model"] for r in titling.requests] == ["gpt-4o-mini", "gpt-4.1-nano"]
    await socket.disconnect()


@pytest.mark.parametrize(
    "answer",
    [
        Reply(
            status=500, headers={"content-type": "application/json"}, body=[b'{"error": {"message": "boom"}}']
        ),
        whole("   \n  "),
    ],
    ids=["http-error", "empty"],
)
async def test_a_failed_title_keeps_the_first_words_and_is_logged_without_the_key(
    titling, settings, chat, alice, answer, caplog
):
    settings.CHAT_UPSTREAM_RETRIES = 0
    titling.queue(Reply(body=sse(*chat_chunks([ANSWER]))), answer)
    with caplog.at_level(logging.WARNING, logger="chat.titles"):
        socket, task, _ = await first_exchange(chat, alice)
        await task
        assert await title_tasks() == [None]
    await chat.arefresh_from_db()
    assert chat.title == FIRST_WORDS
    assert f"No title for conversation {chat.id}" in caplog.text
    assert TEST_API_KEY not in caplog.text
    await socket.disconnect()


async def test_a_title_that_takes_too_long_is_given_up(titling, chat, alice, monkeypatch, caplog):
    monkeypatch.setattr(titles, "TIMEOUT", 0.3)
    never = threading.Event()
    titling.queue(Reply(body=sse(*chat_chunks([ANSWER]))), whole("Too late", never))
    socket, task, _ = await first_exchange(chat, alice)
    await task
    assert await title_tasks() == [None]
    never.set()
    await chat.arefresh_from_db()
    assert chat.title == FIRST_WORDS
    assert "did not answer within 0.3s" in caplog.text
    await socket.disconnect()


async def test_a_rename_made_while_the_title_is_written_wins(titling, chat, alice):
    release = threading.Event()
    titling.queue(Reply(body=sse(*chat_chunks([ANSWER]))), whole("Keeping Basil Alive", release))
    socket, task, _ = await first_exchange(chat, alice)
    await task
    await Conversation.objects.filter(pk=chat.pk).aupdate(title="My herbs")  # the user renamed it
    await asyncio.to_thread(release.set)
    assert await title_tasks() == [None]
    await chat.arefresh_from_db()
    assert chat.title == "My herbs"
    assert await socket.receive_nothing(timeout=0.2)  # no title frame told the tabs otherwise
    await socket.disconnect()


async def test_only_the_first_reply_of_a_chat_is_titled(titling, chat, alice):
    titling.queue(
        Reply(body=sse(*chat_chunks([ANSWER]))), whole("Basil"), Reply(body=sse(*chat_chunks(["More."])))
    )
    socket, task, _ = await first_exchange(chat, alice)
    await task
    assert await title_tasks() == ["Basil"]
    assert (await receive_frame(socket))["type"] == "title"
    await socket.send_json_to({"type": "send", "content": "And mint?"})
    assert (await receive_frame(socket))["type"] == "start"
    task = worker.current().running[chat.id].task
    await frames_until(socket, "done")
    await task
    assert not worker.current().background and len(titling.requests) == 3
    await socket.disconnect()


async def test_the_demo_model_writes_no_titles(settings, chat, alice):
    settings.CHAT_MODEL_TITLES = True
    settings.CHAT_DEMO, settings.CHAT_MODEL, settings.CHAT_DEMO_DELAY = True, "demo", 0
    socket, task, frames = await first_exchange(chat, alice)
    assert frames[-1]["status"] == "finished"
    await task
    assert not worker.current().background
    await chat.arefresh_from_db()
    assert chat.title == FIRST_WORDS
    await socket.disconnect()


async def test_titles_can_be_turned_off(use_upstream, chat, alice):
    use_upstream.queue(Reply(body=sse(*chat_chunks([ANSWER]))))
    socket, task, _ = await first_exchange(chat, alice)
    await task
    assert not worker.current().background and len(use_upstream.requests) == 1
    await socket.disconnect()


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"Basil Care"', "Basil Care"),
        ("Title: Basil care.\nHere is why…", "Basil care"),
        ("**Keeping basil alive**", "Keeping basil alive"),
        ("« Le basilic »", "Le basilic"),
        ("a\x00b", "a\ufffdb"),
        ("word " * 30, ("word " * 16)[:79].rstrip() + "…"),
        ('""', ""),
    ],
)
def test_an_answer_is_cleaned_into_a_title(answer, title):
    assert titles.clean(answer) == title
    assert len(titles.clean(answer)) <= titles.LONGEST


async def test_a_chat_renamed_before_its_first_reply_ended_is_not_asked_about(titling, chat, alice):
    release = threading.Event()
    reply = Reply(body=[b"", *sse(*chat_chunks([ANSWER]))], wait_for=release)
    titling.queue(reply)
    _, socket = await open_socket(chat.id, alice)
    await socket.send_json_to({"type": "send", "content": QUESTION})
    assert (await receive_frame(socket))["type"] == "start"
    task = worker.current().running[chat.id].task
    await Conversation.objects.filter(pk=chat.pk).aupdate(title="My herbs")
    await asyncio.to_thread(release.set)
    await frames_until(socket, "done")
    await task
    assert await title_tasks() == [None]
    assert len(titling.requests) == 1  # no title request at all
    await socket.disconnect()


async def test_a_chat_begun_with_files_alone_is_titled_from_their_names(titling, alice, stored):
    """Nothing typed: the chat's first words are the files' names, and the model still titles it
    (told the names, not the files' text)."""
    from channels.db import database_sync_to_async

    from chat import attachments

    chat = await Conversation.objects.acreate(user=alice)
    csv = await database_sync_to_async(attachments.store)(alice, "basil-log.csv", b"day,leaves\n1,12\n")
    titling.queue(Reply(body=sse(*chat_chunks([ANSWER]))), whole("Basil Leaf Log"))
    _, socket = await open_socket(chat.id, alice)
    await socket.send_json_to({"type": "send", "content": "", "attachments": [csv.pk]})
    assert (await receive_frame(socket))["type"] == "start"
    await frames_until(socket, "done")
    assert await title_tasks() == ["Basil Leaf Log"]
    await chat.arefresh_from_db()
    assert chat.title == "Basil Leaf Log"
    prompt = titling.requests[1]["json"]["messages"][0]["content"]
    assert prompt == titles.PROMPT.format(question="basil-log.csv", answer=ANSWER)
    await socket.disconnect()

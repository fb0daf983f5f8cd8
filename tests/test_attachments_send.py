"""Sending files with a message, through the real ASGI app to the loopback upstream: the
request body the model gets, byte for byte; the counts; the refusals before anything is
written."""

import base64
import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.test import Client

from chat import attachments, tokens
from chat.models import Attachment, ChatModel, Conversation, Message, Provider
from tests import files
from tests.chat_sockets import frames_until, needs_vocabulary, open_socket, receive_frame
from tests.conftest import TEST_API_KEY
from tests.upstream_server import Reply, chat_chunks, sse

pytestmark = pytest.mark.django_db(transaction=True)

CSV = "name,amount\nalice,3\n"


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password="x")


def chat_model(
    upstream, name: str = "gpt-4o", accepts_images: bool = True, api_style: str = "chat"
) -> ChatModel:
    provider = Provider.objects.create(name="loopback", base_url=upstream.base_url, api_key=TEST_API_KEY)
    return ChatModel.objects.create(
        provider=provider, name=name, is_default=True, accepts_images=accepts_images, api_style=api_style
    )


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice)


def uploads(user, model: str = "gpt-4o") -> list[Attachment]:
    return [
        attachments.store(user, "sums.csv", CSV.encode(), model),
        attachments.store(user, "report.pdf", files.pdf("Quarterly figures", "Outlook good"), model),
        attachments.store(user, "shot.png", files.image(1024, 1024), model),
    ]


def wire(body: dict) -> bytes:
    """A request body as chat/upstream/http.py writes it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@needs_vocabulary
async def test_files_reach_the_model_as_delimited_text_and_image_parts(
    upstream, stored, conversation, alice, gpt4o_images
):
    await database_sync_to_async(chat_model)(upstream)
    csv, pdf, png = await database_sync_to_async(uploads)(alice)
    upstream.queue(Reply(body=sse(*chat_chunks(["Seen."]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to(
        {"type": "send", "content": "What do these say?", "attachments": [csv.pk, pdf.pk, png.pk]}
    )
    start = await receive_frame(socket)
    assert start["type"] == "start", start
    done = (await frames_until(socket, "done"))[-1]
    assert done["status"] == "finished"

    with (stored / png.file.name).open("rb") as handle:
        image = base64.b64encode(handle.read()).decode()
    text = (
        "What do these say?\n\n"
        f'<file name="sums.csv">\n{CSV}\n</file>\n\n'
        '<file name="report.pdf">\nQuarterly figures\n\nOutlook good\n</file>'
    )
    expected = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                ],
            }
        ],
        "stream_options": {"include_usage": True},
    }
    assert upstream.requests[0]["body"] == wire(expected)

    # Counted: the text with tiktoken, the 1024×1024 image by gpt-4o's tiles (85 + 4 × 170).
    user_message, reply = await database_sync_to_async(lambda: list(Message.objects.order_by("id")))()
    assert user_message.content == "What do these say?"
    assert user_message.token_count == tokens.count_tokens(text, "gpt-4o") + 765
    overhead = tokens.message_overhead("user", "gpt-4o")
    assert (
        reply.prompt_tokens
        == start["prompt_tokens"]
        == tokens.REPLY_PRIMING + overhead + user_message.token_count
    )

    # The start frame describes the message with its files; the rows say it was sent.
    sent = start["user_message"]["attachments"]
    assert [(a["id"], a["name"], a["kind"]) for a in sent] == [
        (csv.pk, "sums.csv", "text"),
        (pdf.pk, "report.pdf", "pdf"),
        (png.pk, "shot.png", "image"),
    ]
    assert sent[2]["tokens"] == 765 and sent[2]["url"] == f"/attachments/{png.pk}/"
    assert sent[0]["tokens"] == tokens.count_tokens(attachments.file_block("sums.csv", CSV), "gpt-4o")
    rows = await database_sync_to_async(
        lambda: list(Attachment.objects.values_list("message_id", flat=True))
    )()
    assert rows == [user_message.pk] * 3
    await socket.disconnect()


async def test_earlier_files_go_with_the_history(upstream, stored, conversation, alice):
    await database_sync_to_async(chat_model)(upstream)
    csv = await database_sync_to_async(attachments.store)(alice, "sums.csv", CSV.encode(), "gpt-4o")
    upstream.queue(Reply(body=sse(*chat_chunks(["One."]))), Reply(body=sse(*chat_chunks(["Two."]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "", "attachments": [csv.pk]})
    await frames_until(socket, "done")
    await socket.send_json_to({"type": "send", "content": "And the total?"})
    await frames_until(socket, "done")
    block = f'<file name="sums.csv">\n{CSV}\n</file>'
    assert upstream.requests[1]["json"]["messages"] == [
        {"role": "user", "content": block},  # nothing typed: the file alone
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "And the total?"},
    ]
    title = await database_sync_to_async(lambda: Conversation.objects.get(pk=conversation.pk).title)()
    assert title == "sums.csv"
    await socket.disconnect()

    # A tab opened now reads the branch, files and all; its send is not guessed ahead of the
    # save (chat.early) from rows that cannot carry the file: one request per send, each whole.
    upstream.queue(Reply(body=sse(*chat_chunks(["Three."]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Thanks"})
    await frames_until(socket, "done")
    assert len(upstream.requests) == 3
    assert upstream.requests[2]["json"]["messages"][0] == {"role": "user", "content": block}
    await socket.disconnect()


@pytest.mark.parametrize(
    "model",
    [{"accepts_images": False}, {"accepts_images": True, "api_style": "completions"}],
    ids=["not marked", "completions API"],
)
async def test_an_image_to_a_model_that_reads_none_is_refused_before_anything_is_written(
    upstream, stored, conversation, alice, model
):
    await database_sync_to_async(chat_model)(upstream, **model)
    png = await database_sync_to_async(attachments.store)(alice, "shot.png", files.image(), "gpt-4o")
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "What is this?", "attachments": [png.pk]})
    error = await receive_frame(socket)
    assert error["type"] == "error" and error["code"] == "images_not_supported"
    assert "gpt-4o" in error["detail"] and "nothing was sent" in error["detail"]
    assert not await Message.objects.aexists()
    assert (await Attachment.objects.aget()).message_id is None  # still the user's to send elsewhere
    assert upstream.requests == []
    await socket.disconnect()


async def test_anothers_or_a_sent_file_is_unknown_and_nothing_is_written(
    upstream, stored, conversation, alice, bob
):
    await database_sync_to_async(chat_model)(upstream)
    bobs = await database_sync_to_async(attachments.store)(bob, "b.txt", b"bob's", "gpt-4o")
    mine = await database_sync_to_async(attachments.store)(alice, "a.txt", b"alice's", "gpt-4o")
    upstream.queue(Reply(body=sse(*chat_chunks(["Ok."]))))
    _, socket = await open_socket(conversation.id, alice)
    for ids in ([bobs.pk], [mine.pk, bobs.pk], [mine.pk + 1000]):
        await socket.send_json_to({"type": "send", "content": "see", "attachments": ids})
        error = await receive_frame(socket)
        assert (error["type"], error["code"]) == ("error", "unknown_attachment")
    assert not await Message.objects.aexists()
    await socket.send_json_to({"type": "send", "content": "see", "attachments": [mine.pk]})
    await frames_until(socket, "done")
    await socket.send_json_to({"type": "send", "content": "again", "attachments": [mine.pk]})
    error = await receive_frame(socket)
    assert (error["type"], error["code"]) == ("error", "unknown_attachment")
    assert await Message.objects.acount() == 2
    await socket.disconnect()


async def test_a_frame_with_too_many_or_bad_ids_is_refused(settings, conversation, alice):
    settings.CHAT_ATTACHMENTS_PER_MESSAGE = 2
    _, socket = await open_socket(conversation.id, alice)
    for ids, code in (
        ([1, 2, 3], "too_many_files"),
        (["1"], "bad_field"),
        ([1, 1], "bad_field"),
        ({}, "bad_field"),
    ):
        await socket.send_json_to({"type": "send", "content": "x", "attachments": ids})
        error = await receive_frame(socket)
        assert (error["type"], error["code"]) == ("error", code)
    await socket.send_json_to({"type": "send", "content": " ", "attachments": []})
    assert (await receive_frame(socket))["code"] == "empty_content"
    assert not await Message.objects.aexists()
    await socket.disconnect()


async def test_an_edit_carries_its_own_files_and_the_earlier_version_keeps_its(
    upstream, stored, conversation, alice
):
    await database_sync_to_async(chat_model)(upstream)
    first = await database_sync_to_async(attachments.store)(alice, "v1.txt", b"first draft", "gpt-4o")
    second = await database_sync_to_async(attachments.store)(alice, "v2.txt", b"second draft", "gpt-4o")
    upstream.queue(Reply(body=sse(*chat_chunks(["One."]))), Reply(body=sse(*chat_chunks(["Two."]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Check", "attachments": [first.pk]})
    start = await receive_frame(socket)
    await frames_until(socket, "done")
    edited = start["user_message"]["id"]
    await socket.send_json_to(
        {"type": "edit", "message_id": edited, "content": "Check", "attachments": [second.pk]}
    )
    again = await receive_frame(socket)
    assert again["replaces_user"] == edited
    assert [a["name"] for a in again["user_message"]["attachments"]] == ["v2.txt"]
    await frames_until(socket, "done")
    assert upstream.requests[1]["json"]["messages"] == [
        {"role": "user", "content": 'Check\n\n<file name="v2.txt">\nsecond draft\n</file>'}
    ]
    owners = await database_sync_to_async(
        lambda: dict(Attachment.objects.values_list("name", "message_id"))
    )()
    assert owners == {"v1.txt": edited, "v2.txt": again["user_message"]["id"]}
    await socket.disconnect()


async def test_an_upload_through_the_async_stack(stored, alice):
    """The upload view as the ASGI server runs it (on the event loop, its steps on threads)."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import AsyncClient

    client = AsyncClient()
    await client.aforce_login(alice)
    response = await client.post(
        "/attachments/", {"file": SimpleUploadedFile("report.pdf", files.pdf("Hello"))}
    )
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "pdf"
    assert (await Attachment.objects.aget()).text == "Hello"
    refused = await client.post("/attachments/", {"file": SimpleUploadedFile("x.png", b"<html>")})
    assert refused.status_code == 400 and refused.json()["error"] == "content_mismatch"


@needs_vocabulary
async def test_a_model_that_reads_no_images_is_told_of_each_earlier_image_and_counted_as_sent(
    upstream, stored, conversation, alice, gpt4o_images
):
    """The chat moved to a model that reads no images: an earlier image goes as a short note,
    and the prompt count is of that note, not of the image's tiles."""

    def models():
        chat_model(upstream)  # gpt-4o, reads images, the default
        ChatModel.objects.create(provider=Provider.objects.get(), name="gpt-4o-mini", accepts_images=False)

    await database_sync_to_async(models)()
    png = await database_sync_to_async(attachments.store)(
        alice, "shot.png", files.image(1024, 1024), "gpt-4o"
    )
    upstream.queue(Reply(body=sse(*chat_chunks(["A chart."]))), Reply(body=sse(*chat_chunks(["Up."]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Look", "attachments": [png.pk]})
    await frames_until(socket, "done")
    await Conversation.objects.filter(pk=conversation.pk).aupdate(model="gpt-4o-mini")
    await socket.send_json_to({"type": "send", "content": "Which way?"})
    start = await receive_frame(socket)
    assert start["type"] == "start", start
    await frames_until(socket, "done")

    looked = "Look\n\n[image shot.png left out: this model does not read images]"
    sent = [
        {"role": "user", "content": looked},
        {"role": "assistant", "content": "A chart."},
        {"role": "user", "content": "Which way?"},
    ]
    assert upstream.requests[1]["body"] == wire(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": sent,
            "stream_options": {"include_usage": True},
        }
    )
    reply = await Message.objects.order_by("-id").afirst()
    expected = tokens.REPLY_PRIMING + sum(
        tokens.message_overhead(m["role"], "gpt-4o-mini") + tokens.count_tokens(m["content"], "gpt-4o-mini")
        for m in sent
    )
    assert reply.prompt_tokens == start["prompt_tokens"] == expected
    await socket.disconnect()


async def test_an_edit_keeps_the_edited_messages_files_unless_it_names_others(
    upstream, stored, conversation, alice, gpt4o_images, settings
):
    """An edit without `attachments` keeps all the edited message's files; one that names some
    keeps those (and may add uploads). The new version's files are rows of its own that share
    the stored file: sent and counted with the new text, the earlier version's untouched, and
    the file deleted only with the last row naming it."""
    await database_sync_to_async(chat_model)(upstream)
    csv, pdf, png = await database_sync_to_async(uploads)(alice)
    upstream.queue(*(Reply(body=sse(*chat_chunks([word]))) for word in ("One.", "Two.", "Three.")))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Check", "attachments": [csv.pk, png.pk]})
    first = (await receive_frame(socket))["user_message"]
    await frames_until(socket, "done")

    # The text alone edited: both files go with the new version, counted in its prompt.
    await socket.send_json_to({"type": "edit", "message_id": first["id"], "content": "Check again"})
    start = await receive_frame(socket)
    assert start["type"] == "start", start
    await frames_until(socket, "done")
    second = start["user_message"]
    assert [(a["name"], a["tokens"]) for a in second["attachments"]] == [
        (a["name"], a["tokens"]) for a in first["attachments"]
    ]
    assert {a["id"] for a in second["attachments"]}.isdisjoint(a["id"] for a in first["attachments"])
    body = upstream.requests[1]["json"]["messages"][0]["content"]
    assert body[0] == {"type": "text", "text": f'Check again\n\n<file name="sums.csv">\n{CSV}\n</file>'}
    assert body[1]["image_url"]["url"].startswith("data:image/png;base64,")
    message = await Message.objects.aget(pk=second["id"])
    text = attachments.message_text("Check again", [csv])
    if tokens.count_tokens(text, "gpt-4o") is not None:
        assert message.token_count == tokens.count_tokens(text, "gpt-4o") + 765
    assert message.attachment_count == 2

    # This edit keeps the image only: the CSV is not sent.
    kept = second["attachments"][1]["id"]
    await socket.send_json_to(
        {"type": "edit", "message_id": second["id"], "content": "Only the picture", "attachments": [kept]}
    )
    third = (await receive_frame(socket))["user_message"]
    await frames_until(socket, "done")
    assert [a["name"] for a in third["attachments"]] == ["shot.png"]
    assert upstream.requests[2]["json"]["messages"][0]["content"][0] == {
        "type": "text",
        "text": "Only the picture",
    }
    # Every version lists its own files; a file of a message not edited is unknown to an edit.
    listed = await database_sync_to_async(
        lambda: sorted(Attachment.objects.exclude(message=None).values_list("message_id", "name"))
    )()
    assert listed == sorted(
        [(first["id"], "sums.csv"), (first["id"], "shot.png"), (second["id"], "sums.csv")]
        + [(second["id"], "shot.png"), (third["id"], "shot.png")]
    )
    await socket.send_json_to(
        {"type": "edit", "message_id": third["id"], "content": "x", "attachments": [csv.pk]}
    )
    assert (await receive_frame(socket))["code"] == "unknown_attachment"
    await socket.disconnect()

    # One stored file per upload, and the quota counts each once: it still fits.
    assert len([p for p in stored.rglob("*") if p.is_file()]) == 3
    settings.CHAT_ATTACHMENT_QUOTA_BYTES = csv.size + pdf.size + png.size + 1
    await database_sync_to_async(attachments.check_quota)(alice, 1)

    # Deleting one version's rows leaves the others' file readable; the last row takes it.
    def delete(message_ids):
        Attachment.objects.filter(message_id__in=message_ids).delete()  # its own commit: files go then

    await database_sync_to_async(delete)([first["id"]])
    assert (stored / png.file.name).exists() and (stored / csv.file.name).exists()

    def download(attachment_id):
        client = Client()
        client.force_login(alice)
        return client.get(f"/attachments/{attachment_id}/")

    assert (await database_sync_to_async(download)(kept)).status_code == 200
    await database_sync_to_async(delete)([second["id"], third["id"]])
    assert not (stored / png.file.name).exists() and not (stored / csv.file.name).exists()
    assert (stored / pdf.file.name).exists()  # never sent: not touched


async def test_an_edit_keeping_an_image_for_a_model_that_reads_none_is_refused_whole(
    upstream, stored, conversation, alice
):
    """As a send with an image is: the user removes it in the editor, or picks a model."""

    def models():
        chat_model(upstream)
        ChatModel.objects.create(provider=Provider.objects.get(), name="gpt-4o-mini", accepts_images=False)

    await database_sync_to_async(models)()
    png = await database_sync_to_async(attachments.store)(alice, "shot.png", files.image(), "gpt-4o")
    upstream.queue(Reply(body=sse(*chat_chunks(["A square."]))), Reply(body=sse(*chat_chunks(["Ok."]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Look", "attachments": [png.pk]})
    first = (await receive_frame(socket))["user_message"]["id"]
    await frames_until(socket, "done")
    await Conversation.objects.filter(pk=conversation.pk).aupdate(model="gpt-4o-mini")
    await socket.send_json_to({"type": "edit", "message_id": first, "content": "Look again"})
    assert (await receive_frame(socket))["code"] == "images_not_supported"
    assert await Message.objects.acount() == 2 and await Attachment.objects.acount() == 1
    await socket.send_json_to(
        {"type": "edit", "message_id": first, "content": "Words only", "attachments": []}
    )
    start = await receive_frame(socket)
    assert start["user_message"]["attachments"] == []
    await frames_until(socket, "done")
    assert upstream.requests[-1]["json"]["messages"] == [{"role": "user", "content": "Words only"}]
    await socket.disconnect()

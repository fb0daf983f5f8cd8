"""Nobody sees or touches what is not theirs: every page, export and socket is scoped to its
owner, and another user's conversation is a 404 (or a refused socket), never a 403 that
would confirm it exists. Staff review through the admin only."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.urls import reverse

from chat.models import Conversation, Message, Share, ShareView, TranscriptAccess
from chatsite.asgi import application
from tests.chat_sockets import frames_until, open_socket, receive_frame, session_cookie, text_of
from tests.upstream_server import held_reply


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice")  # signed in with force_login: no password to hash


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob")


@pytest.fixture
def charlie(db) -> User:
    return User.objects.create_superuser("charlie", password=None)


@pytest.fixture
def bobs_chat(bob) -> Conversation:
    chat = Conversation.objects.create(user=bob, title="Bob's secret plans", system_prompt="bob's prompt")
    Message.objects.create(conversation=chat, role="user", content="bob's question")
    Message.objects.create(conversation=chat, role="assistant", content="bob's answer")
    # Shared (issue #15): a link must change nothing below; only /s/<token>/ reads through it.
    Share.objects.create(conversation=chat, created_by=bob)
    return chat


def snapshot(conversation: Conversation) -> tuple:
    conversation = Conversation.objects.get(pk=conversation.pk)
    messages = tuple(Message.objects.filter(conversation=conversation).order_by("id").values_list())
    return (
        conversation.title,
        conversation.model,
        conversation.system_prompt,
        conversation.updated_at,
        messages,
        tuple(Share.objects.filter(conversation=conversation).order_by("id").values_list()),
    )


def requests_for(chat: Conversation) -> list[tuple[str, str, dict]]:
    message = chat.messages.order_by("id").first()
    pk = chat.pk
    return [
        ("get", reverse("chat:conversation", args=[pk]), {}),
        ("post", reverse("chat:rename", args=[pk]), {"title": "pwned"}),
        ("post", reverse("chat:delete", args=[pk]), {}),
        ("post", reverse("chat:settings", args=[pk]), {"model": "", "system_prompt": "pwned"}),
        ("get", reverse("chat:export_md", args=[pk]), {}),
        ("get", reverse("chat:export_json", args=[pk]), {}),
        ("get", reverse("chat:messages", args=[pk]), {}),
        ("get", reverse("chat:message", args=[pk, message.pk]), {}),
        ("get", reverse("chat:share", args=[pk]), {}),
        ("post", reverse("chat:share", args=[pk]), {"show_system_prompt": "on"}),
        ("post", reverse("chat:share_revoke", args=[pk]), {}),
    ]


# --- over HTTP ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["alice", "charlie"])
def test_nobody_else_can_read_or_change_a_conversation(client, request, who, bobs_chat):
    """Not another user, and not staff either: the chat pages are for the owner alone."""
    client.force_login(request.getfixturevalue(who))
    before = snapshot(bobs_chat)
    for method, url, data in requests_for(bobs_chat):
        response = getattr(client, method)(url, data)
        assert response.status_code == 404, (method, url)
        assert b"secret plans" not in response.content and b"bob&#x27;s" not in response.content
    assert snapshot(bobs_chat) == before


@pytest.mark.django_db
def test_json_requests_get_the_same_404(client, alice, bobs_chat):
    client.force_login(alice)
    before = snapshot(bobs_chat)
    for method, url, data in requests_for(bobs_chat):
        response = getattr(client, method)(url, data, HTTP_ACCEPT="application/json")
        assert response.status_code == 404, (method, url)
    assert snapshot(bobs_chat) == before


@pytest.mark.django_db
def test_another_users_conversation_looks_like_one_that_does_not_exist(client, alice, bobs_chat):
    client.force_login(alice)
    missing = bobs_chat.pk + 1000
    for name in ("chat:conversation", "chat:export_md", "chat:export_json", "chat:messages", "chat:share"):
        theirs = client.get(reverse(name, args=[bobs_chat.pk]))
        nothing = client.get(reverse(name, args=[missing]))
        assert (theirs.status_code, theirs.content) == (nothing.status_code, nothing.content)


@pytest.mark.django_db
def test_the_owner_can_do_all_of_it(client, bob, bobs_chat):
    """The same requests succeed for Bob, so the 404s above are about ownership."""
    client.force_login(bob)
    for method, url, data in requests_for(bobs_chat):
        if url.endswith("/delete/"):
            continue
        assert getattr(client, method)(url, data).status_code in (200, 302), url
    assert client.post(reverse("chat:delete", args=[bobs_chat.pk])).status_code == 302
    assert not Conversation.objects.filter(pk=bobs_chat.pk).exists()


@pytest.mark.django_db
def test_a_message_cannot_be_read_through_ones_own_conversation(client, alice, bobs_chat):
    client.force_login(alice)
    mine = Conversation.objects.create(user=alice)
    for message in bobs_chat.messages.all():
        assert client.get(reverse("chat:message", args=[mine.pk, message.pk])).status_code == 404


@pytest.mark.django_db
def test_the_sidebar_and_search_show_only_ones_own(client, alice, bobs_chat):
    client.force_login(alice)
    Conversation.objects.create(user=alice, title="Alice's chat")
    for query in ("", "secret", "bob"):
        body = client.get(reverse("chat:new"), {"q": query}).content.decode()
        assert "secret plans" not in body and "bob&#x27;s" not in body
        assert f'data-conversation-id="{bobs_chat.pk}"' not in body


@pytest.mark.django_db
def test_the_sidebars_search_as_you_type_lists_only_ones_own(client, alice, bobs_chat):
    client.force_login(alice)
    mine = Conversation.objects.create(user=alice, title="Alice's secret chat")
    for query in ("", "secret", "bob"):
        data = client.get(reverse("chat:list"), {"q": query}).json()
        assert bobs_chat.pk not in [c["id"] for c in data["conversations"]]
        assert "secret plans" not in json.dumps(data) and "bob question" not in json.dumps(data)
    assert [c["id"] for c in client.get(reverse("chat:list"), {"q": "secret"}).json()["conversations"]] == [
        mine.pk
    ]


@pytest.mark.django_db
def test_home_never_lands_on_someone_elses_conversation(client, charlie, bobs_chat):
    client.force_login(charlie)
    response = client.get(reverse("chat:home"))
    assert response.status_code == 200
    assert b"secret plans" not in response.content


@pytest.mark.django_db
def test_staff_review_through_the_admin_and_leave_a_trace(client, charlie, bobs_chat):
    client.force_login(charlie)
    assert client.get(reverse("chat:conversation", args=[bobs_chat.pk])).status_code == 404
    transcript = client.get(reverse("admin:chat_conversation_change", args=[bobs_chat.pk]))
    assert transcript.status_code == 200
    assert "bob&#x27;s answer" in transcript.content.decode() or "bob's answer" in transcript.content.decode()
    assert TranscriptAccess.objects.filter(staff=charlie, conversation=bobs_chat, kind="view").exists()


@pytest.mark.django_db
def test_users_without_staff_rights_cannot_use_the_admin(client, alice, bobs_chat):
    client.force_login(alice)
    for url in (
        reverse("admin:chat_conversation_transcript", args=[bobs_chat.pk]),
        reverse("admin:chat_conversation_export_md", args=[bobs_chat.pk]),
        reverse("admin:chat_conversation_change", args=[bobs_chat.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url


# --- through a shared link (issue #15) --------------------------------------------------------


def shared_link(chat: Conversation) -> str:
    return reverse("chat:shared", args=[chat.shares.live().get().token])


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["alice", "charlie"])
def test_a_shared_link_lets_others_read_and_nothing_more(client, request, who, bob, bobs_chat):
    user = request.getfixturevalue(who)
    client.force_login(user)
    Conversation.objects.create(user=bob, title="Bob's other chat")
    before = snapshot(bobs_chat)
    page = client.get(shared_link(bobs_chat)).content.decode()
    assert "s answer</p>" in page  # the reply, rendered
    assert "bob&#x27;s prompt" not in page and "bob's prompt" not in page  # not chosen
    assert "Bob&#x27;s other chat" not in page
    assert ShareView.objects.filter(viewer=user, share__conversation=bobs_chat).exists()
    for method, url, data in requests_for(bobs_chat):  # the owner's pages stay the owner's
        assert getattr(client, method)(url, data).status_code == 404, (method, url)
    assert snapshot(bobs_chat) == before


@pytest.mark.django_db
def test_a_shared_link_shows_the_reader_nothing_of_their_own(client, alice, bobs_chat):
    """No sidebar: the reader's chats are not listed on a page whose address they may pass on."""
    Conversation.objects.create(user=alice, title="Alice's diary")
    client.force_login(alice)
    assert "Alice&#x27;s diary" not in client.get(shared_link(bobs_chat)).content.decode()


@pytest.mark.django_db
def test_a_link_opens_only_its_own_conversation(client, alice, bob, bobs_chat):
    client.force_login(alice)
    other = Conversation.objects.create(user=bob, title="Bob's unshared chat")
    Message.objects.create(conversation=other, role="user", content="unshared words")
    token = bobs_chat.shares.get().token
    for path in (f"/s/{token}/{other.pk}/", f"/s/{token}{other.pk}/", f"/s/{token[:-1]}/", "/s/%20/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"unshared words" not in response.content and b"bob&#x27;s" not in response.content


@pytest.mark.django_db
def test_who_opened_a_link_is_the_owners_to_see(client, alice, charlie, bob, bobs_chat):
    client.force_login(alice)
    client.get(shared_link(bobs_chat))
    client.force_login(charlie)
    assert client.get(reverse("chat:share", args=[bobs_chat.pk])).status_code == 404
    client.force_login(bob)
    viewers = client.get(reverse("chat:share", args=[bobs_chat.pk])).json()["viewers"]
    assert [v["username"] for v in viewers] == ["alice"]


@pytest.mark.django_db
def test_a_revoked_link_reads_nothing(client, alice, bob, bobs_chat):
    link = shared_link(bobs_chat)
    client.force_login(bob)
    client.post(reverse("chat:share_revoke", args=[bobs_chat.pk]))
    client.force_login(alice)
    response = client.get(link)
    assert response.status_code == 404 and b"bob&#x27;s" not in response.content


# --- over the websocket ------------------------------------------------------------------------


@database_sync_to_async
def reply_of(conversation: Conversation) -> Message | None:
    return Message.objects.filter(conversation=conversation, role="assistant").order_by("id").last()


@database_sync_to_async
def message_count(conversation: Conversation) -> int:
    return Message.objects.filter(conversation=conversation).count()


@pytest.mark.django_db(transaction=True)
async def test_nobody_else_can_open_a_socket_on_a_conversation(alice, charlie, bobs_chat):
    """Not even with the conversation shared (bobs_chat has a live link): a link reads, never
    watches or writes."""
    before = await message_count(bobs_chat)
    for user in (alice, charlie, None):
        connected, _ = await open_socket(bobs_chat.pk, user)
        assert not connected, user
    assert await message_count(bobs_chat) == before


async def close_code(conversation_id: int, user) -> int:
    """How the handshake ends, as the browser sees it."""
    socket = WebsocketCommunicator(
        application,
        f"/ws/chat/{conversation_id}/",
        headers=[
            (b"host", b"localhost"),
            (b"origin", b"http://localhost"),
            (b"cookie", f"sessionid={await session_cookie(user)}".encode()),
        ],
    )
    connected, code = await socket.connect(timeout=5)
    assert not connected
    return code


@pytest.mark.django_db(transaction=True)
async def test_a_refused_socket_looks_like_one_on_a_missing_conversation(alice, bobs_chat):
    assert await close_code(bobs_chat.pk, alice) == await close_code(bobs_chat.pk + 1000, alice)


@pytest.mark.django_db(transaction=True)
async def test_nobody_else_can_watch_stop_or_add_to_a_streaming_reply(
    use_upstream, alice, charlie, bob, bobs_chat
):
    reply, release = held_reply(["Bob's ", "private "], ["reply."])
    use_upstream.queue(reply)
    _, bobs_socket = await open_socket(bobs_chat.pk, bob)
    await bobs_socket.send_json_to({"type": "send", "content": "a secret"})
    first = await frames_until(bobs_socket, "delta")
    before = await message_count(bobs_chat)

    # Joining Bob's conversation mid-reply (to be sent the resume frame) is refused.
    for intruder in (alice, charlie):
        connected, socket = await open_socket(bobs_chat.pk, intruder)
        assert not connected
        await socket.disconnect()

    # Alice's own socket carries no conversation id a frame could swap: her stop and send
    # act on her conversation, and none of Bob's frames reach her.
    alices_chat = await Conversation.objects.acreate(user=alice)
    connected, alices_socket = await open_socket(alices_chat.pk, alice)
    assert connected
    await alices_socket.send_json_to({"type": "stop"})
    refused = await receive_frame(alices_socket, timeout=5)
    assert refused["code"] == "not_streaming"
    await alices_socket.send_json_to({"type": "stop", "conversation_id": bobs_chat.pk})
    assert (await receive_frame(alices_socket, timeout=5))["type"] == "error"

    release.set()
    frames = first + await frames_until(bobs_socket, "done")
    assert text_of(frames) == "Bob's private reply."
    assert frames[-1]["status"] == "finished"
    assert await alices_socket.receive_nothing(timeout=0.3)
    saved = await reply_of(bobs_chat)
    assert (saved.status, saved.content) == ("finished", "Bob's private reply.")
    assert await message_count(bobs_chat) == before
    assert await message_count(alices_chat) == 0
    await alices_socket.disconnect()
    await bobs_socket.disconnect()

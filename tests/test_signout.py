"""Ending a session ends its chat sockets: sign-out, password change, deactivation (chat/signout.py).

Real sessions (cookies from django.contrib.auth.login), the real ASGI app for the sockets,
and the real views (the site's and the admin's) for the changes, through Django's
AsyncClient on the same event loop as the sockets.
"""

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import AsyncClient

from chat.models import Conversation, Message
from chat.signout import SIGNED_OUT
from tests.chat_sockets import frames_until, open_socket, receive_frame, session_cookie
from tests.upstream_server import Reply, chat_chunks, sse

pytestmark = pytest.mark.django_db(transaction=True)

NEW_PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def charlie(db):
    return User.objects.create_superuser("charlie", password="charlie-password-1")


async def signed_in_socket(user, conversation):
    """A socket and an HTTP client of one browser: the same session cookie."""
    cookie = await session_cookie(user)
    connected, socket = await open_socket(conversation.id, cookie=cookie)
    assert connected
    client = AsyncClient()
    client.cookies["sessionid"] = cookie
    return socket, client


async def admin_client(user) -> AsyncClient:
    client = AsyncClient()
    client.cookies["sessionid"] = await session_cookie(user)
    return client


async def assert_signed_out(socket) -> None:
    """The socket says why, then closes with SIGNED_OUT."""
    frame = await receive_frame(socket, timeout=5)
    assert frame["type"] == "error" and frame["code"] == "signed_out" and frame["message_id"] is None
    closing = await socket.receive_output(timeout=5)
    assert closing == {"type": "websocket.close", "code": SIGNED_OUT}


async def assert_send_does_nothing(socket, conversation, upstream) -> None:
    await socket.send_json_to({"type": "send", "content": "still there?"})
    assert await socket.receive_nothing(timeout=0.3)
    assert not await Message.objects.filter(conversation=conversation).aexists()
    assert upstream.requests == []


async def assert_open(socket) -> None:
    await socket.send_json_to({"type": "ping"})
    assert await receive_frame(socket, timeout=5) == {"type": "pong"}


def conversation_of(user) -> Conversation:
    return Conversation.objects.create(user=user)


# -- sign-out ------------------------------------------------------------------------------
async def test_signing_out_closes_that_sessions_socket_and_a_send_then_does_nothing(use_upstream, alice, bob):
    mine = await database_sync_to_async(conversation_of)(alice)
    theirs = await database_sync_to_async(conversation_of)(bob)
    socket, browser = await signed_in_socket(alice, mine)
    _, other_device = await open_socket(mine.id, alice)  # alice's other session
    _, bobs = await open_socket(theirs.id, bob)

    response = await browser.post("/accounts/logout/")
    assert response.status_code == 302

    await assert_signed_out(socket)
    await assert_send_does_nothing(socket, mine, use_upstream)
    await assert_open(other_device)  # signing out here does not sign out alice's laptop
    await assert_open(bobs)
    for each in (socket, other_device, bobs):
        await each.disconnect()


async def test_a_signed_out_socket_gets_no_more_of_a_streaming_reply(use_upstream, alice):
    from tests.upstream_server import held_reply

    reply, release = held_reply(["Hel", "lo"], [" secret", " rest"])
    use_upstream.queue(reply)
    conversation = await database_sync_to_async(conversation_of)(alice)
    socket, browser = await signed_in_socket(alice, conversation)
    await socket.send_json_to({"type": "send", "content": "Hi"})
    assert (await receive_frame(socket))["type"] == "start"
    assert (await receive_frame(socket))["content"] == "Hello"

    await browser.post("/accounts/logout/")
    await assert_signed_out(socket)
    release.set()
    assert await socket.receive_nothing(timeout=0.3)  # the rest of the reply is not relayed
    await socket.disconnect()


# -- password change ---------------------------------------------------------------------------
async def test_a_password_change_in_another_session_closes_this_sessions_socket(use_upstream, alice, bob):
    mine = await database_sync_to_async(conversation_of)(alice)
    theirs = await database_sync_to_async(conversation_of)(bob)
    _, socket = await open_socket(mine.id, alice)
    _, bobs = await open_socket(theirs.id, bob)
    elsewhere = await admin_client(alice)  # alice on another device

    response = await elsewhere.post(
        "/accounts/password_change/",
        {"old_password": "alice-password-1", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302

    await assert_signed_out(socket)
    await assert_send_does_nothing(socket, mine, use_upstream)
    await assert_open(bobs)
    for each in (socket, bobs):
        await each.disconnect()


async def test_a_password_set_in_the_admin_closes_the_users_sockets(use_upstream, alice, bob, charlie):
    mine = await database_sync_to_async(conversation_of)(alice)
    theirs = await database_sync_to_async(conversation_of)(bob)
    _, socket = await open_socket(mine.id, alice)
    _, bobs = await open_socket(theirs.id, bob)
    staff = await admin_client(charlie)

    response = await staff.post(
        f"/admin/auth/user/{alice.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )
    assert response.status_code == 302

    await assert_signed_out(socket)
    await assert_send_does_nothing(socket, mine, use_upstream)
    await assert_open(bobs)
    for each in (socket, bobs):
        await each.disconnect()


# -- deactivation ------------------------------------------------------------------------------
async def test_deactivating_a_user_in_the_admin_closes_their_sockets(use_upstream, alice, bob, charlie):
    mine = await database_sync_to_async(conversation_of)(alice)
    theirs = await database_sync_to_async(conversation_of)(bob)
    _, socket = await open_socket(mine.id, alice)
    _, bobs = await open_socket(theirs.id, bob)
    staff = await admin_client(charlie)

    response = await staff.post(
        f"/admin/auth/user/{alice.pk}/change/",
        {  # the change form as the admin shows it, with "Active" unticked
            "username": "alice",
            "date_joined_0": "2025-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302
    assert not (await User.objects.aget(pk=alice.pk)).is_active

    await assert_signed_out(socket)
    await assert_send_does_nothing(socket, mine, use_upstream)
    await assert_open(bobs)
    for each in (socket, bobs):
        await each.disconnect()


async def test_an_admin_edit_that_keeps_the_password_and_active_keeps_the_socket(alice, charlie):
    mine = await database_sync_to_async(conversation_of)(alice)
    _, socket = await open_socket(mine.id, alice)
    staff = await admin_client(charlie)
    response = await staff.post(
        f"/admin/auth/user/{alice.pk}/change/",
        {
            "username": "alice",
            "first_name": "Alice",
            "is_active": "on",
            "date_joined_0": "2025-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302
    await assert_open(socket)
    await socket.disconnect()


# -- the second line: a session that ended without a signal -------------------------------------
async def test_a_session_deleted_without_a_signal_refuses_the_next_send(use_upstream, alice, settings):
    settings.CHAT_SESSION_RECHECK_SECONDS = 0  # re-read the session before every frame that writes
    mine = await database_sync_to_async(conversation_of)(alice)
    _, socket = await open_socket(mine.id, alice)
    await Session.objects.all().adelete()  # e.g. clearsessions, or a database restore

    await socket.send_json_to({"type": "send", "content": "still there?"})
    await assert_signed_out(socket)
    assert not await Message.objects.filter(conversation=mine).aexists()
    assert use_upstream.requests == []
    await socket.disconnect()


async def test_a_live_session_still_sends_after_the_recheck(use_upstream, alice, settings):
    settings.CHAT_SESSION_RECHECK_SECONDS = 0
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Hi", " there"]))))
    mine = await database_sync_to_async(conversation_of)(alice)
    _, socket = await open_socket(mine.id, alice)
    await socket.send_json_to({"type": "send", "content": "Hello"})
    frames = await frames_until(socket, "done")
    assert frames[-1]["status"] == "finished"
    await socket.disconnect()

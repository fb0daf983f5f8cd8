"""Ending a session ends its chat sockets (issue #12, "Sessions").

A websocket is authenticated once, at its handshake; without this module it kept
streaming replies after its user signed out, changed password or was deactivated.
Two lines of defence:

1. Every chat socket joins its user's channel-layer group (`user_group`). Signing out,
   saving the user (a password change, deactivation, in the site or the admin) and
   deleting the user send that group a `chat.session_check` message, once the change is
   committed. Each socket that the change signs out gets an `error` frame (`signed_out`)
   and is closed with SIGNED_OUT. Which sockets:
   - sign-out: the sockets of that one session (the user's other devices stay signed in);
   - a new password: every socket whose session's auth hash no longer matches the user's.
     That is every other session's, and also the changing browser's own sockets: Django
     gave that browser a new session key (`update_session_auth_hash`), and its page
     reconnects with the new cookie;
   - deactivation or deletion: all of the user's sockets.
2. The group message can be missed: a session that expires, is deleted in the database
   or by `clearsessions`, a change made by a process with no channel layer in common, a
   group membership that channels_redis expired. So before acting on a frame that writes
   or calls the model, a socket re-reads its session (session row, user active, auth
   hash) when it last did so more than CHAT_SESSION_RECHECK_SECONDS ago. The handshake
   counts as a check, so a socket's first send costs nothing extra; after that it is one
   trip to the database thread per socket every few seconds at most, never one per frame.
"""

import asyncio
import hashlib
import logging
import time
from importlib import import_module

from asgiref.sync import async_to_sync
from channels.auth import get_user
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY
from django.db import transaction
from django.utils.crypto import constant_time_compare

log = logging.getLogger(__name__)

SIGNED_OUT = 4401  # close code: the socket's session ended (docs/protocol.md)
SIGNED_OUT_DETAIL = "You were signed out (signed out, password changed or account disabled). Sign in again."
MESSAGE_TYPE = "chat.session_check"

_sending: set[asyncio.Task] = set()  # group sends started from async code, kept until done


def user_group(user_id) -> str:
    return f"chat-user-{user_id}"


def session_digest(session_key: str) -> str:
    """What the group message names a session by: not the key itself, which is a bearer secret."""
    return hashlib.sha256(session_key.encode()).hexdigest()


# -- the sockets' side ------------------------------------------------------------------------
class SessionGuard:
    """One socket's session: what it was at the handshake, and when it was last confirmed."""

    def __init__(self, scope: dict) -> None:
        # No session: a host site whose own websocket middleware sets scope["user"]
        # (docs/reusable-app.md). Then only deactivation applies; there is nothing to re-read.
        session = scope.get("session")
        self.user_id = scope["user"].pk
        self.session_key: str | None = getattr(session, "session_key", None)
        self.digest = session_digest(self.session_key) if self.session_key else None
        self.auth_hash: str | None = session.get(HASH_SESSION_KEY) if self.session_key else None
        self.checked = time.monotonic()  # the handshake just checked it (channels' AuthMiddleware)
        self.ended = False

    def ended_by(self, event: dict) -> bool:
        """Whether a `chat.session_check` message signs this socket out."""
        if event.get("active") is False:
            return True
        if self.digest is not None and constant_time_compare(event.get("session") or "", self.digest):
            return True
        auth_hash = event.get("auth_hash")
        if auth_hash is None or self.auth_hash is None:
            return False
        return not constant_time_compare(auth_hash, self.auth_hash)

    async def allows(self, frame_type: str) -> bool:
        """Whether to act on a frame: never once signed out; writes only on a live session."""
        if self.ended:
            return False
        if frame_type == "ping" or self.session_key is None:
            return True
        now = time.monotonic()
        if now - self.checked < settings.CHAT_SESSION_RECHECK_SECONDS:
            return True
        store = import_module(settings.SESSION_ENGINE).SessionStore(self.session_key)
        # channels' get_user is Django's: session row (unexpired), the backend's user (the
        # model backend refuses inactive users) and the session auth hash.
        user = await get_user({"session": store})
        if not user.is_authenticated or user.pk != self.user_id:
            return False
        self.checked = now
        return True


async def join(socket) -> None:
    if socket.channel_layer is not None:
        await socket.channel_layer.group_add(user_group(socket.session_guard.user_id), socket.channel_name)


async def leave(socket) -> None:
    if socket.channel_layer is not None:
        await socket.channel_layer.group_discard(
            user_group(socket.session_guard.user_id), socket.channel_name
        )


# -- the senders' side: signal receivers, in sync code (views, the admin, the shell) -----------
def notify(user_id, **check) -> None:
    """Send the user's sockets a session check, from sync or async code.

    From a sync view under daphne, async_to_sync runs the send on the server's own event
    loop (where the in-memory layer's sockets wait); from a thread with no loop it makes
    one (the Redis layer reaches every process from there). Called on a running loop (a
    signal sent from async code), it cannot block, so the send becomes a task.
    A failed send must not fail the sign-out or the save: the re-check catches it later.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": MESSAGE_TYPE, **check}
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        task = loop.create_task(_send(layer, user_group(user_id), message))
        _sending.add(task)
        task.add_done_callback(_sending.discard)
        return
    try:
        async_to_sync(layer.group_send)(user_group(user_id), message)
    except Exception:
        log.exception("Could not tell user %s's chat sockets that their session changed", user_id)


async def _send(layer, group: str, message: dict) -> None:
    try:
        await layer.group_send(group, message)
    except Exception:
        log.exception("Could not tell %s that its session changed", group)


def on_logged_out(sender, request, user, **kwargs) -> None:
    if user is None or request is None:
        return
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        user_id, digest = user.pk, session_digest(session_key)
        transaction.on_commit(lambda: notify(user_id, session=digest))


def on_user_saved(sender, instance, created, update_fields=None, **kwargs) -> None:
    if created:
        return
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # every sign-in saves this; it changes nobody's session
    user_id, active = instance.pk, bool(getattr(instance, "is_active", True))
    auth_hash = instance.get_session_auth_hash() if hasattr(instance, "get_session_auth_hash") else None
    transaction.on_commit(lambda: notify(user_id, auth_hash=auth_hash, active=active))


def on_user_deleted(sender, instance, **kwargs) -> None:
    user_id = instance.pk
    transaction.on_commit(lambda: notify(user_id, active=False))


def connect_signals() -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.signals import user_logged_out
    from django.db.models.signals import post_delete, post_save

    user_model = get_user_model()
    user_logged_out.connect(on_logged_out, dispatch_uid="chat-signout-logged-out")
    post_save.connect(on_user_saved, sender=user_model, dispatch_uid="chat-signout-user-saved")
    post_delete.connect(on_user_deleted, sender=user_model, dispatch_uid="chat-signout-user-deleted")

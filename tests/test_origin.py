"""Which pages may open the chat socket (chat/origin.py), through the real ASGI app: the page's
own origin (scheme, host and port) and CSRF_TRUSTED_ORIGINS, nothing else."""

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from chat.models import Conversation
from chatsite.asgi import application
from tests.chat_sockets import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def chat(alice):
    return Conversation.objects.create(user=alice)


async def connects(
    chat, alice, origin: str | None, host: str = "localhost", scheme: str = "ws", **headers
) -> bool:
    """Does a handshake signed in as alice, with these headers, get through?"""
    sent = [(b"host", host.encode()), (b"cookie", f"sessionid={await session_cookie(alice)}".encode())]
    if origin is not None:
        sent.append((b"origin", origin.encode()))
    sent += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    socket = WebsocketCommunicator(application, f"/ws/chat/{chat.id}/", headers=sent)
    socket.scope["scheme"] = scheme  # as daphne sets it: wss behind its own TLS
    connected, _ = await socket.connect(timeout=5)
    if connected:
        await socket.disconnect()
    return connected


async def test_the_pages_own_origin_may_connect(chat, alice, settings):
    settings.ALLOWED_HOSTS = ["localhost", "chat.example.com"]
    assert await connects(chat, alice, "http://localhost")
    assert await connects(chat, alice, "http://localhost:8000", host="localhost:8000")
    assert await connects(chat, alice, "https://chat.example.com", host="chat.example.com", scheme="wss")


async def test_another_port_of_the_same_host_is_refused(chat, alice):
    assert not await connects(chat, alice, "http://localhost:9999")
    assert not await connects(chat, alice, "http://localhost:9999", host="localhost:8000")
    assert not await connects(chat, alice, "http://localhost", host="localhost:8000")


async def test_the_other_scheme_of_the_same_host_is_refused(chat, alice):
    assert not await connects(chat, alice, "https://localhost")
    assert not await connects(chat, alice, "http://localhost", scheme="wss")


async def test_behind_an_https_proxy_the_forwarded_scheme_counts_only_when_trusted(chat, alice, settings):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    https = {"host": "chat.example.com", "x_forwarded_proto": "https"}
    assert not await connects(chat, alice, "https://chat.example.com", **https)  # not told to trust it
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert await connects(chat, alice, "https://chat.example.com", **https)
    assert not await connects(chat, alice, "http://chat.example.com", **https)


async def test_csrf_trusted_origins_may_connect(chat, alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.corp.example"]
    assert await connects(chat, alice, "https://chat.example.com")
    assert await connects(chat, alice, "https://team.corp.example")
    assert not await connects(chat, alice, "http://chat.example.com")
    assert not await connects(chat, alice, "https://chat.example.com:8443")
    assert not await connects(chat, alice, "http://team.corp.example")


async def test_other_origins_hosts_and_no_origin_are_refused(chat, alice, settings):
    assert not await connects(chat, alice, "https://evil.example")
    assert not await connects(chat, alice, "null")  # a sandboxed frame, a file: page
    assert not await connects(chat, alice, None)
    assert not await connects(chat, alice, "")
    # The Host must be one the site serves, even when the Origin matches it.
    assert not await connects(chat, alice, "http://evil.example", host="evil.example")

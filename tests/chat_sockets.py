"""Opening chat websockets against the real ASGI app, signed in with a real session cookie."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chat import tokens
from chatsite.asgi import application
from tests.wire import FrameDecoder

# For tests whose counts need tiktoken's vocabulary (exact token figures).
needs_vocabulary = pytest.mark.skipif(
    not tokens.vocabulary_path("o200k_base").exists(),
    reason="the o200k_base vocabulary is not in TIKTOKEN_CACHE_DIR (set it to shared/tiktoken-cache)",
)


@database_sync_to_async
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def encoding_text(app):
    """`app` whose text frames are encoded as UTF-8 as it sends them, as a real server does
    (daphne: autobahn, or chat.backpressure.DirectText); the test communicator passes the
    str through. A frame no server could send then fails in the app's send, as under daphne."""

    async def wrapped(scope, receive, send):
        async def encoding_send(message):
            if message.get("text") is not None:
                message["text"].encode()
            await send(message)

        return await app(scope, receive, encoding_send)

    return wrapped


async def open_socket(
    conversation_id: int,
    user=None,
    origin: str = "http://localhost",
    cookie: str | None = None,
    app=application,
):
    """Connect to `app` as `user` with a new session, or with the session `cookie` (neither:
    anonymous); returns (connected, communicator)."""
    headers = [(b"host", b"localhost"), (b"origin", origin.encode())]
    if user is not None and cookie is None:
        cookie = await session_cookie(user)
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    socket = WebsocketCommunicator(app, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, _ = await socket.connect(timeout=5)
    return connected, socket


async def receive_frame(socket, timeout: float = 1) -> dict:
    """The next server frame, decoded as a client would (tests.wire.FrameDecoder)."""
    decoder = socket.__dict__.setdefault("frame_decoder", FrameDecoder())
    return decoder.decode(await socket.receive_from(timeout=timeout))


async def frames_until(socket, kind: str, timeout: float = 10) -> list[dict]:
    """Every frame received up to and including the first of type `kind`."""
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await receive_frame(socket, timeout=timeout)
            frames.append(frame)
            if frame["type"] == kind:
                return frames


def text_of(frames: list[dict]) -> str:
    return "".join(f.get("content", "") for f in frames if f["type"] == "delta")

"""Opening chat websockets against the real ASGI app, signed in with a real session cookie."""

import asyncio
import json

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.asgi import application


@database_sync_to_async
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_socket(conversation_id: int, user=None, origin: str = "http://localhost"):
    """Connect as `user` (None: anonymous); returns (connected, communicator)."""
    headers = [(b"host", b"localhost"), (b"origin", origin.encode())]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await session_cookie(user)}".encode()))
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, _ = await socket.connect(timeout=5)
    return connected, socket


async def frames_until(socket, kind: str, timeout: float = 10) -> list[dict]:
    """Every frame received up to and including the first of type `kind`."""
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await socket.receive_from(timeout=timeout))
            frames.append(frame)
            if frame["type"] == kind:
                return frames


def text_of(frames: list[dict]) -> str:
    return "".join(f.get("content", "") for f in frames if f["type"] == "delta")

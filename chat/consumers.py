"""The chat websocket: authorise, read frames, hand them to chat.generation. Nothing else.

See docs/protocol.md for the frames.
"""

import asyncio

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import generation, signout
from chat.backpressure import DirectText, Lag
from chat.models import Conversation
from chat.protocol import BadFrame, FrameLimiter, parse

DENIED = 4403


class ChatConsumer(AsyncWebsocketConsumer):
    conversation = None
    catching_up: asyncio.Task | None = None  # feeding a reader that fell behind (chat.backpressure)

    async def dispatch(self, message) -> None:
        """channels' dispatch, minus the `aclose_old_connections()` it awaits before every
        handler: a trip to the one database thread per frame received (and per delta relayed
        from another worker), queued behind whatever the database is doing. Our database
        calls go through `database_sync_to_async`, which closes old connections around
        each call itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        user = self.scope.get("user")
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        if user is None or not user.is_authenticated:
            await self.close(DENIED)
            return
        self.conversation = await Conversation.objects.for_user(user).filter(pk=conversation_id).afirst()
        if self.conversation is None:  # unknown and not-yours look the same from outside
            await self.close(DENIED)
            return
        self.send_lock = asyncio.Lock()
        # The server's own send: skips channels' session wrapper on every frame, and lets
        # chat.backpressure see how much daphne holds for this socket.
        self.raw_send = self.scope.get("raw_send")
        self.lag = Lag(self.raw_send, settings.CHAT_SOCKET_BUFFER_BYTES)
        self.direct = DirectText(self.raw_send)
        self.limiter = FrameLimiter()
        self.remote_watchdog: asyncio.Task | None = None
        self.settled_reply: int | None = None  # a remote reply whose end the watchdog showed
        self.session_guard = signout.SessionGuard(self.scope)
        await signout.join(self)
        await self.accept()
        await generation.watch(self, self.conversation.id)

    async def disconnect(self, code) -> None:
        if self.conversation is None:
            return
        if self.remote_watchdog is not None:
            self.remote_watchdog.cancel()
        if self.catching_up is not None:
            self.catching_up.cancel()
        await signout.leave(self)
        await generation.unwatch(self, self.conversation.id)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if not self.limiter.allow():
            if not self.limiter.warned:  # one notice per burst, not one per dropped frame
                self.limiter.warned = True
                await self.send_error("rate_limited", "Too many frames; slow down. This one was ignored.")
            return
        try:
            command = parse(text_data, bytes_data)
        except BadFrame as exc:
            await self.send_error(exc.code, exc.detail)
            return
        if not await self.session_guard.allows(command.type):
            await self.sign_out()
            return
        if command.type == "send":
            await generation.send(self, self.conversation, command.content, command.request_id)
        elif command.type == "edit":
            await generation.edit(self, self.conversation, command.content, command.request_id)
        elif command.type == "regenerate":
            await generation.regenerate(self, self.conversation, command.request_id)
        elif command.type == "stop":
            await generation.stop(self, self.conversation.id)
        else:
            await self.send_frame('{"type":"pong"}')

    # -- sending -----------------------------------------------------------------------
    async def send_frame(self, text: str) -> None:
        """Frames go out one at a time, so a resume is never overtaken by a delta."""
        async with self.send_lock:
            if self.direct.send(text):
                return
            if self.raw_send is None:
                await self.send(text_data=text)
            else:
                await self.raw_send({"type": "websocket.send", "text": text})

    async def send_delta(self, text: str, reply) -> None:
        """A delta, unless the reader is far behind: then a catch-up task feeds it instead."""
        if self.catching_up is not None:
            return  # the catch-up task sends this piece with the others it missed
        if self.lag.over():
            self.catching_up = asyncio.create_task(self.catch_up(reply, sent=reply.seq - 1))
            return
        await self.send_frame(text)

    async def catch_up(self, reply, sent: int) -> None:
        """Feed a lagging reader what it missed (from seq `sent`) as its buffer drains, at most
        half the buffer limit at a time; then either hand back to live deltas or, once the
        reply has ended, send its final frames."""
        budget = max(1, settings.CHAT_SOCKET_BUFFER_BYTES // 2)
        try:
            while True:
                await self.lag.drained()
                if sent < reply.seq:
                    texts, sent = reply.batch_frames(sent, budget)
                    for text in texts:
                        await self.send_frame(text)
                elif reply.finals is not None:
                    for text in reply.finals:
                        await self.send_frame(text)
                    return
                else:
                    return  # caught up with a live reply; deltas flow directly again
        except Exception:  # the socket went away
            return
        finally:
            self.catching_up = None

    async def send_error(self, code: str, detail: str, message_id: int | None = None) -> None:
        await self.send_frame(generation.frame(type="error", code=code, detail=detail, message_id=message_id))

    # -- the session ending (chat.signout) ------------------------------------------------
    async def chat_session_check(self, event) -> None:
        if self.session_guard.ended_by(event):
            await self.sign_out()

    async def sign_out(self) -> None:
        """Say why, stop relaying to this socket (even the rest of a reply), and close it."""
        if self.session_guard.ended:
            return
        self.session_guard.ended = True
        await self.send_error("signed_out", signout.SIGNED_OUT_DETAIL)
        await generation.unwatch(self, self.conversation.id)
        await self.close(signout.SIGNED_OUT)

    # -- replies streaming in another worker process (Redis channel layer) -------------
    async def chat_started(self, event) -> None:
        await generation.on_started(self, event, self.conversation.id)

    async def chat_frame(self, event) -> None:
        if event.get("message_id") == self.settled_reply:
            return  # already shown ended; a resume or done now would restart or end it twice
        await self.send_frame(event["frame"])
        if event.get("final") and self.remote_watchdog is not None:
            self.remote_watchdog.cancel()
            self.remote_watchdog = None

    def watch_remote_reply(self, reply_id: int) -> None:
        if self.remote_watchdog is not None:
            self.remote_watchdog.cancel()
        self.remote_watchdog = asyncio.create_task(self._settle_remote(reply_id))

    async def _settle_remote(self, reply_id: int) -> None:
        """If the process streaming the reply dies or the reply ends unseen, show its final state."""
        while True:
            await asyncio.sleep(settings.CHAT_CHECKPOINT_INTERVAL * 2)
            finals = await generation.settle_remote(self.conversation.id, reply_id)
            if finals is not None:
                # No await between the read and show_ended's mark: frames the owner sends from
                # now on are dropped, and one it sent before cancelled this task (chat_frame).
                await self.show_ended(reply_id, finals)
                return

    async def show_ended(self, reply_id: int, finals: list[str]) -> None:
        """Show a reply's final state read from the database, once: the watchdog and a
        sweep of dead replies can both find it."""
        if reply_id == self.settled_reply:
            return
        self.settled_reply = reply_id
        for text in finals:
            await self.send_frame(text)

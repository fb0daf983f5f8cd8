"""The chat websocket: authorise, read frames, hand them to chat.commands. Nothing else.

Frames out and flow control are chat.relay.Watcher's, which this consumer is.

See docs/protocol.md for the frames.
"""

import asyncio

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import commands, early, remote, signout, watching, worker
from chat.backpressure import DirectText, Lag
from chat.frames import PONG, error_frame
from chat.models import Conversation
from chat.protocol import BadFrame, FrameLimiter, parse
from chat.relay import Watcher

DENIED = 4403


class ChatConsumer(Watcher, AsyncWebsocketConsumer):
    conversation = None

    async def dispatch(self, message) -> None:
        """channels' `AsyncConsumer.dispatch`, minus the `aclose_old_connections()` it awaits
        before every handler: a trip to the one database thread per frame received (and per
        channel-layer message), queued behind whatever the database is doing.

        Kept as a copy because channels (4.3) offers no public way to skip that call: every
        consumer class's dispatch makes it, and there is no hook or setting. It is safe to
        skip: the calls that must not reuse a broken connection go through
        `database_sync_to_async`, which closes old connections around each call itself
        (channels.db.DatabaseSyncToAsync), and connections are persistent here
        (CONN_MAX_AGE=None). Measured cost of the call: docs/benchmark.md."""
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
        await watching.watch(self, self.conversation.id)

    async def disconnect(self, code) -> None:
        if self.conversation is None:
            return
        if self.remote_watchdog is not None:
            self.remote_watchdog.cancel()
        self.stop_catching_up()
        await signout.leave(self)
        await watching.unwatch(self, self.conversation.id)

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
            await commands.send(
                self, self.conversation, command.content, command.request_id, command.attachments
            )
        elif command.type == "edit":
            await commands.edit(
                self,
                self.conversation,
                command.content,
                command.request_id,
                command.message_id,
                command.attachments,
            )
        elif command.type == "switch":
            await commands.switch(self, self.conversation, command.message_id, command.request_id)
        elif command.type == "regenerate":
            await commands.regenerate(self, self.conversation, command.request_id)
        elif command.type == "stop":
            await commands.stop(self, self.conversation.id)
        else:
            await self.send_frame(PONG)

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

    async def send_error(self, code: str, detail: str, message_id: int | None = None) -> None:
        await self.send_frame(error_frame(code, detail, message_id))

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
        await watching.unwatch(self, self.conversation.id)
        await self.close(signout.SIGNED_OUT)

    # -- replies streaming in another worker process (Redis channel layer) -------------
    async def chat_started(self, event) -> None:
        early.forget(worker.current(), self.conversation.id)  # its branch changes, maybe elsewhere
        await remote.on_started(self, event, self.conversation.id)

    async def chat_title(self, event) -> None:
        """The conversation's new title (chat.titles), from whichever process wrote it."""
        await self.send_frame(event["frame"])

    async def chat_frame(self, event) -> None:
        if event.get("message_id") == self.settled_reply:
            return  # already shown ended; a resume or done now would restart or end it twice
        await self.send_frame(event["frame"])
        if event.get("final") and self.remote_watchdog is not None:
            self.remote_watchdog.cancel()
            self.remote_watchdog = None

    async def chat_branch(self, event) -> None:
        """Another version was chosen, in a tab on any process (chat.commands.switch)."""
        early.forget(worker.current(), self.conversation.id)
        await self.send_frame(event["frame"])

    def watch_remote_reply(self, reply_id: int) -> None:
        if self.remote_watchdog is not None:
            self.remote_watchdog.cancel()
        self.remote_watchdog = asyncio.create_task(self._settle_remote(reply_id))

    async def _settle_remote(self, reply_id: int) -> None:
        """If the process streaming the reply dies or the reply ends unseen, show its final state."""
        while True:
            await asyncio.sleep(settings.CHAT_CHECKPOINT_INTERVAL * 2)
            finals = await watching.settle_remote(self.conversation.id, reply_id)
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

"""Replies and tabs in different worker processes (Redis channel layer only).

A reply streams in the process that began it. A tab on another process follows it in
three steps: it asks the owner to `attach` it (chat.cluster.reply_group), the owner's
`RemoteTabs` sends it a resume and then its deltas through chat.fanout (one message per
round per process), and, if the owner goes quiet, the tab's watchdog reads the reply's
final state from the database (`settle`). `stop` from any tab reaches the owner the
same way.
"""

import asyncio
import json
import logging

from channels.layers import get_channel_layer

from chat import cluster, fanout
from chat.models import Message

log = logging.getLogger(__name__)


class RemoteTabs:
    """The owner's side: the tabs in other processes following one reply, and what each
    has been sent. chat.fanout collects from it each round."""

    def __init__(self, reply) -> None:
        self.reply = reply  # chat.generation.Generation
        self.channel: str | None = None  # where attach/stop requests for the reply arrive
        self.sent: dict[str, int] = {}  # other processes' sockets -> last seq sent
        self.pending: set[str] = set()  # attached, resume not yet sent
        self.target: dict[str, str] = {}  # such a socket -> its process's inbox (chat.fanout)
        self.finals: list[str] | None = None  # the end, once the reply is over
        self.flushed = asyncio.Event()  # ... and once that end has been sent
        self.listener: asyncio.Task | None = None
        self.announcing: asyncio.Task | None = None  # open(), beside the model's request

    def announce(self) -> None:
        # Beside the model's request, not before it: its Redis round trips added to every
        # first token, and a burst of sends started one reply per announcement.
        self.announcing = asyncio.create_task(self._announce())

    async def _announce(self) -> None:
        try:
            await self.open()
        except Exception:  # Redis away: stream to this process's tabs; others catch up from the DB
            log.exception("Could not announce reply %s to other processes", self.reply.reply_id)

    async def open(self) -> None:
        """Take attach/stop requests from sockets in other worker processes."""
        layer = get_channel_layer()
        conversation_id = self.reply.conversation_id
        # The default prefix, like the consumers': channels_redis has one receive lock per
        # process and the holder only pops its own prefix's queue, so a second prefix
        # starved the sockets (or this listener) until a message for the holder came.
        self.channel = await layer.new_channel()
        await layer.group_add(cluster.reply_group(conversation_id), self.channel)
        self.listener = asyncio.create_task(self.listen())
        await layer.group_send(
            cluster.conversation_group(conversation_id),
            {"type": "chat.started", "frame": self.reply.start_frame(), "process": cluster.PROCESS_ID},
        )

    async def listen(self) -> None:
        layer = get_channel_layer()
        while True:
            try:
                message = await layer.receive(self.channel)
            except Exception:  # Redis away for a moment: listen again rather than never
                log.exception("Could not read attach/stop requests for reply %s", self.reply.reply_id)
                await asyncio.sleep(1)
                continue
            kind = message.get("type")
            if kind == "chat.attach":
                channel = message["channel"]
                self.pending.add(channel)
                # A process that does not say its inbox gets a message per frame per tab.
                self.target[channel] = message.get("inbox") or f"socket:{channel}"
                fanout.wake(self)
            elif kind == "chat.detach":
                self.sent.pop(message["channel"], None)
                self.pending.discard(message["channel"])
                self.target.pop(message["channel"], None)
            elif kind == "chat.stop":
                self.reply.stop()

    def collect(self, outbox: dict[str, list[dict]], waiting: set[str] = frozenset()) -> bool:
        """Put the frames other processes' tabs have not had yet in `outbox` (per inbox): a
        resume for a tab that just attached (or missed a message), else one delta of all it
        missed since the last round; then, once the reply is over, its end. Tabs behind the
        inboxes in `waiting` (nobody read them lately) wait. True when that end is in."""
        reply = self.reply
        for channel in list(self.pending):
            if self.target[channel] in waiting:
                continue
            self.pending.discard(channel)
            self.sent[channel] = reply.seq
            for text in reply.resume_frames():
                outbox[self.target[channel]].append(self._item(channel, text))
        seq = reply.seq
        for channel, sent in list(self.sent.items()):
            if sent < seq:
                self.sent[channel] = seq
                for text in reply.span_frames(sent, seq):
                    outbox[self.target[channel]].append(self._item(channel, text))
        if self.finals is None:
            return False
        for text in self.finals:
            for channel in self.sent:
                outbox[self.target[channel]].append(self._item(channel, text, final=True))
        return True

    def missed(self, target: str) -> None:
        """Nobody read the last message to that inbox: its tabs get a fresh resume instead."""
        for channel in [c for c in self.sent if self.target[c] == target]:
            del self.sent[channel]
            self.pending.add(channel)

    def _item(self, channel: str, text: str, final: bool = False) -> dict:
        return {"channel": channel, "frame": text, "final": final, "message_id": self.reply.reply_id}

    def drop(self, target: str) -> None:
        """Forget the tabs behind an inbox that stopped taking messages (they settle from the
        database when the reply ends)."""
        for channel in [c for c, t in self.target.items() if t == target]:
            self.sent.pop(channel, None)
            self.pending.discard(channel)
            del self.target[channel]

    async def close(self, finals: list[str]) -> None:
        if self.announcing is not None:
            await self.announcing  # a reply that ends fast must find its listener to close
        if self.listener is None:
            return
        self.listener.cancel()
        # The fan-out sends what the tabs elsewhere have not had, then the end, in order.
        self.finals = finals
        await fanout.flushed(self)
        await get_channel_layer().group_discard(cluster.reply_group(self.reply.conversation_id), self.channel)


# -- the tab's side ---------------------------------------------------------------------------
async def attach(socket, conversation_id: int, reply_id: int) -> None:
    """Ask the process streaming this reply to send this socket a resume and then its deltas."""
    await get_channel_layer().group_send(
        cluster.reply_group(conversation_id),
        {"type": "chat.attach", "channel": socket.channel_name, "inbox": await fanout.inbox()},
    )
    socket.watch_remote_reply(reply_id)


async def on_started(socket, event: dict, conversation_id: int) -> None:
    """Another process started a reply in this conversation."""
    if event["process"] == cluster.PROCESS_ID:
        return  # this process's sockets got the start frame directly
    await socket.send_frame(event["frame"])
    await attach(socket, conversation_id, json.loads(event["frame"])["message_id"])


async def stop(conversation_id: int) -> bool:
    """Ask the process streaming the conversation's reply, if any, to stop it."""
    if not await Message.objects.filter(
        conversation_id=conversation_id, status=Message.Status.STREAMING
    ).aexists():
        return False
    await get_channel_layer().group_send(cluster.reply_group(conversation_id), {"type": "chat.stop"})
    return True

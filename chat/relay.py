"""Frames to this process's sockets: who watches which conversation, and flow control.

Every socket on a conversation gets every frame of its replies, in order. A reply
(chat.generation) sends through `Watchers`; a socket takes part by being a `Watcher`,
the interface below, which chat.consumers.ChatConsumer implements. Sockets in other
worker processes are chat.fanout's and chat.remote's.

Flow control lives here too. Daphne applies no backpressure, so a reader that stopped
reading (a suspended laptop) would have every delta buffered in the server's memory.
A socket whose unsent bytes pass the limit (chat.backpressure.Lag) stops getting live
deltas; a catch-up task feeds it what it missed as its buffer drains, a bounded batch
at a time, and then hands it back to live deltas or sends the reply's end.
"""

import asyncio
import logging
from typing import Protocol

from django.conf import settings

from chat.backpressure import Lag

log = logging.getLogger(__name__)


class Streaming(Protocol):
    """What a socket reads of the reply it follows (chat.generation.Generation)."""

    reply_id: int
    seq: int  # pieces so far
    finals: list[str] | None  # the reply's error/done frames, once it has ended

    def batch_frames(self, start: int, budget: int) -> tuple[list[str], int]: ...


class Watcher:
    """A socket watching a conversation: the frames it takes and its flow control.

    A subclass (the consumer) provides `send_frame`, which sends one frame at a time in
    order, and `show_ended`, and sets `lag` (chat.backpressure.Lag) when it opens.
    """

    lag: Lag
    catching_up: asyncio.Task | None = None  # feeding a reader that fell behind
    # The model, encoding and system prompt this socket last counted a send with
    # (chat.commands); None until its first send.
    counting: tuple[str, str, str] | None = None

    async def send_frame(self, text: str) -> None:
        raise NotImplementedError

    async def show_ended(self, reply_id: int, finals: list[str]) -> None:
        """Show a reply's final state read from the database (chat.watching's sweep)."""
        raise NotImplementedError

    def lagging(self) -> bool:
        """Behind enough that a nicety (rendered Markdown) is better left out."""
        return self.catching_up is not None or self.lag.over()

    async def send_delta(self, text: str, reply: Streaming) -> None:
        """A delta, unless the reader is far behind: then a catch-up task feeds it instead."""
        if self.catching_up is not None:
            return  # the catch-up task sends this piece with the others it missed
        if self.lag.over():
            self.catching_up = asyncio.create_task(self.catch_up(reply, sent=reply.seq - 1))
            return
        await self.send_frame(text)

    async def send_end(self, finals: list[str]) -> None:
        """A reply's end; a socket still catching up sends it after the text it missed."""
        if self.catching_up is not None:
            return
        for text in finals:
            await self.send_frame(text)

    async def catch_up(self, reply: Streaming, sent: int) -> None:
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
        except OSError:  # the connection went away: nothing more to feed it
            return
        except Exception:  # anything else is a bug; the reader stays behind until its next frame
            log.exception("Could not catch up a lagging socket on reply %s", reply.reply_id)
        finally:
            self.catching_up = None

    def stop_catching_up(self) -> None:
        if self.catching_up is not None:
            self.catching_up.cancel()


class Watchers:
    """This process's sockets, by the conversation they watch. Only the event loop's
    thread touches it (chat.worker.Worker hands other threads copies)."""

    def __init__(self) -> None:
        self.sockets: dict[int, set[Watcher]] = {}

    def add(self, conversation_id: int, socket: Watcher) -> None:
        self.sockets.setdefault(conversation_id, set()).add(socket)

    def discard(self, conversation_id: int, socket: Watcher) -> None:
        sockets = self.sockets.get(conversation_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.sockets[conversation_id]

    def of(self, conversation_id: int) -> list[Watcher]:
        """A copy: sending awaits, and sockets come and go meanwhile."""
        return list(self.sockets.get(conversation_id, ()))

    def all(self) -> list[Watcher]:
        return [socket for sockets in self.sockets.values() for socket in sockets]

    async def send_delta(self, conversation_id: int, text: str, reply: Streaming) -> None:
        """A live delta of `reply` to every socket on the conversation (the hot path)."""
        for socket in list(self.sockets.get(conversation_id, ())):
            try:
                await socket.send_delta(text, reply)
            except OSError:  # the connection is gone: stop feeding it (it must not hurt the reply)
                log.debug("Dropped a socket whose connection failed", exc_info=True)
                self.discard(conversation_id, socket)
            except Exception:
                self._unsendable(conversation_id)

    async def send(self, conversation_id: int, text: str, droppable: bool = False) -> None:
        """A frame to every socket on the conversation; a `droppable` one (rendered Markdown)
        is left out for a socket that lags."""
        for socket in list(self.sockets.get(conversation_id, ())):
            try:
                if droppable and socket.lagging():
                    continue
                await socket.send_frame(text)
            except OSError:
                log.debug("Dropped a socket whose connection failed", exc_info=True)
                self.discard(conversation_id, socket)
            except Exception:
                self._unsendable(conversation_id)

    def _unsendable(self, conversation_id: int) -> None:
        # Not the connection: this frame could not be sent (a bug, or text that should
        # have been made storable). Dropping the socket would leave an open tab that
        # never hears of a reply again, so it stays a watcher (issue #12).
        log.exception("Could not send a frame to a socket on conversation %s", conversation_id)

    async def send_end(self, conversation_id: int, reply_id: int, finals: list[str]) -> None:
        for socket in self.of(conversation_id):
            try:
                await socket.send_end(finals)
            except OSError:  # a socket that went away must not keep the end from the others
                log.debug("Could not send a reply's end to a socket", exc_info=True)
            except Exception:  # nor one that could not take a frame; that is a bug to see
                log.exception("Could not send reply %s's end to a socket", reply_id)

    async def show_ended(self, conversation_id: int, reply_id: int, finals: list[str]) -> None:
        for socket in self.of(conversation_id):
            try:
                await socket.show_ended(reply_id, finals)
            except OSError:  # a socket that went away must not stop the others
                log.debug("Could not show an ended reply to a socket", exc_info=True)
            except Exception:  # nor one that could not take a frame; that is a bug to see
                log.exception("Could not show ended reply %s to a socket", reply_id)

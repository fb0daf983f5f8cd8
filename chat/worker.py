"""This process's replies and sockets: one `Worker` per event loop, reached through `current()`.

Everything the relay keeps between frames lives here, so it has one lifetime (the event
loop's; tests run one loop after another and each gets a fresh Worker) and one owner:
the replies it runs, the sockets watching each conversation, the turns waiting to be
saved, and the three writer tasks of chat.writers. Only the loop's own thread touches it;
other threads (a sync view, the benchmark's probe) go through `live_ids()` and
`Worker.from_thread`, which are safe to call from anywhere.
"""

import asyncio
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import Callable

from chat import cluster, replies, shutdown
from chat.early import EarlyRequest, Known
from chat.generation import Generation
from chat.relay import Watchers
from chat.remote import RemoteTabs
from chat.writers import Batched, TurnWriter, checkpoints, keep_running, save_before_exit

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.running: dict[int, Generation] = {}  # conversation id -> the reply streaming there
        self.live: tuple[int, ...] = ()  # their reply ids; replaced whole, so other threads may read it
        self.ended_deltas = 0  # pieces of the replies that ran here and ended (chat.metrics)
        self.watchers = Watchers()
        # conversation id -> what a send there will ask the provider (chat.early)
        self.known: dict[int, Known] = {}
        self.turns = TurnWriter(self.start, self.live_ids)
        self.finishes = Batched(replies.finish_many)
        self.checkpointer: asyncio.Task | None = None
        self.swept = False  # replies left streaming by a dead process were marked (chat.watching)
        self.background: set[asyncio.Task] = set()  # work after a reply ended (chat.titles)
        # A graceful stop (SIGTERM, SIGINT) saves every streaming reply's text first.
        shutdown.when_stopping(lambda: save_before_exit(self.running))

    def live_ids(self) -> list[int]:
        return list(self.live)

    def busy(self, conversation_id: int) -> bool:
        """A reply streams in the conversation, or a turn there waits to be saved."""
        return conversation_id in self.running or conversation_id in self.turns.queued

    async def start(
        self, turn: replies.Turn, request_id: str | None = None, early: EarlyRequest | None = None
    ) -> Generation:
        """Run the reply of a turn just saved: its start frame to every tab, then its task.
        `early` is the provider request sent while the turn was saved, if any (chat.early):
        the reply reads it if it asked what the turn asks."""
        stream = early.adopt(turn) if early is not None else None
        generation = Generation(turn, self, request_id, stream, early.started if stream else None)
        self.known.pop(turn.conversation_id, None)  # the branch changes; known again at its end
        self.running[turn.conversation_id] = generation
        self.live = (*self.live, turn.reply_id)
        await generation.broadcast(generation.start_frame())
        if not cluster.single_process():
            generation.remote = RemoteTabs(generation)
            generation.remote.announce()
        generation.task = asyncio.create_task(generation.run(), name=f"reply-{turn.reply_id}")
        self.checkpointer = keep_running(
            self.checkpointer, lambda: checkpoints(self.running), "reply-checkpoints"
        )
        return generation

    def ended(self, generation: Generation) -> None:
        """The reply is saved (or could not be): no longer this process's to run."""
        self.ended_deltas += generation.seq  # chat.metrics: from now on not summed from `running`
        if self.running.get(generation.conversation_id) is generation:
            del self.running[generation.conversation_id]
        self.live = tuple(i for i in self.live if i != generation.reply_id)

    def stop_all(self) -> None:
        for generation in list(self.running.values()):
            generation.stop()
        for task in list(self.background):
            task.cancel()

    def from_thread(self, read: Callable[["Worker"], object], timeout: float = 1.0):
        """`read(self)` run on the loop's thread, for a caller on another thread."""
        result: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(read(self))
            except BaseException as exc:
                result.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return result.result(timeout)


_workers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Worker]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()  # other threads list the workers while a loop makes its own


def current() -> Worker:
    """This event loop's Worker, made on first use."""
    loop = asyncio.get_running_loop()
    worker = _workers.get(loop)
    if worker is None:
        with _lock:
            worker = _workers[loop] = Worker(loop)
    return worker


def workers() -> list[Worker]:
    with _lock:
        return list(_workers.values())


def live_ids() -> list[int]:
    """The replies this process streams, from any thread (a sync view asks)."""
    return [reply_id for worker in workers() for reply_id in worker.live]


def forget() -> None:
    """Stop every reply and drop every Worker: the next use starts afresh (tests)."""
    with _lock:
        gone = list(_workers.values())
        _workers.clear()
    for worker in gone:
        worker.stop_all()

"""The process's database writers: each call that arrives while the database thread
works on earlier ones waits and goes with them in one trip.

Three of them, each one task per process (chat.worker.Worker owns them):
- `TurnWriter` saves the sends, edits and regenerates that arrive together
  (replies.begin_many) and starts their replies;
- `Batched(replies.finish_many)` saves the replies that end together;
- `checkpoints` renews every streaming reply's lease and saves its new text, about once
  a second for the whole process (never one write per delta).
Why batching: one trip and one commit instead of one per call (docs/benchmark.md).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings

from chat import metrics, replies

log = logging.getLogger(__name__)

STARTS_PER_TURN = 8  # replies of a batch started before the loop sees to the sockets again


def keep_running(task: asyncio.Task | None, work: Callable[[], Awaitable], name: str) -> asyncio.Task:
    """`task` while it runs, else a new task doing `work()`: one such task at a time."""
    if task is None or task.done():
        task = asyncio.get_running_loop().create_task(work(), name=name)
    return task


def outcome_seen(future: asyncio.Future) -> None:
    """A call whose caller went away: its refusal (if any) has no one to show it to."""
    if not future.cancelled():
        future.exception()


async def shielded(future: asyncio.Future):
    """The write happens even if the caller goes away (a socket closing mid-send): a reply
    belongs to the process, not to the socket that asked for it."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(outcome_seen)
        raise


class Batched:
    """Database calls that arrive while the database thread works on earlier ones, run
    together in one trip: `run_many(items)` returns a result or an exception per item."""

    def __init__(self, run_many) -> None:
        self.run_many = run_many
        self.items: list[tuple[object, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def __call__(self, item):
        future = asyncio.get_running_loop().create_future()
        self.items.append((item, future))
        self.task = keep_running(self.task, self._drain, "batched-writes")
        return await shielded(future)

    async def _drain(self) -> None:
        while self.items:
            batch, self.items = self.items, []
            try:
                results = await database_sync_to_async(self.run_many)([item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


@dataclass
class QueuedTurn:
    begin: Callable  # replies.begin_turn / begin_edit / begin_regenerate
    conversation: object
    args: tuple
    request_id: str | None
    future: asyncio.Future
    early: object = None  # chat.early.EarlyRequest: the provider request sent meanwhile


class TurnWriter:
    """Saves turns (replies.begin_*) in batches and starts their replies, in order.

    `start(turn, request_id)` makes the reply run (chat.worker.Worker.start); `live_ids()`
    are the replies this process streams, which a save must not take for dead."""

    def __init__(self, start, live_ids: Callable[[], list[int]]) -> None:
        self.start = start
        self.live_ids = live_ids
        self.queued: dict[int, QueuedTurn] = {}  # conversation id -> its turn, in order
        self.task: asyncio.Task | None = None

    async def save(self, begin, conversation, args: tuple, request_id: str | None, early=None):
        """replies.begin_*, then start the reply; its chat.generation.Generation."""
        future = asyncio.get_running_loop().create_future()
        self.queued[conversation.id] = QueuedTurn(begin, conversation, args, request_id, future, early)
        self.task = keep_running(self.task, self._write, "turn-writer")
        return await shielded(future)

    async def _write(self) -> None:
        while self.queued:
            batch = list(self.queued.values())
            try:
                results = await database_sync_to_async(replies.begin_many)(
                    [(turn.begin, turn.conversation, *turn.args) for turn in batch], self.live_ids()
                )
            except Exception as exc:  # the batch's commit failed: nothing of it was saved
                results = [(False, exc)] * len(batch)
            for started, (queued, (saved, value)) in enumerate(zip(batch, results, strict=True), 1):
                # Out of the queue and into the running replies with no await between: a
                # second send to the conversation is refused as busy all along.
                del self.queued[queued.conversation.id]
                if not saved:
                    if queued.early is not None:  # refused or failed: the provider is told to stop
                        queued.early.cancel()
                    queued.future.set_exception(value)
                    continue
                try:
                    queued.future.set_result(await self.start(value, queued.request_id, queued.early))
                except Exception as exc:
                    log.exception("Could not start reply %s", value.reply_id)
                    if queued.early is not None:
                        queued.early.cancel()
                    queued.future.set_exception(exc)
                if started % STARTS_PER_TURN == 0:
                    # Their model requests begin in the next turn of the loop, beside the
                    # sockets' reads and writes: hundreds begun in one turn held every
                    # streaming reply's deltas until the last had begun (docs/benchmark.md).
                    await asyncio.sleep(0)


async def checkpoints(running: dict) -> None:
    """Every CHAT_CHECKPOINT_INTERVAL: renew the leases of every reply in `running`
    (conversation id -> Generation) and save their new text, in one trip to the database
    for the whole process."""
    while True:
        await asyncio.sleep(settings.CHAT_CHECKPOINT_INTERVAL)
        states = unsaved(running)
        saving = {state["id"] for state in states}
        leases = [g.reply_id for g in list(running.values()) if g.reply_id not in saving]
        if not states and not leases:
            continue
        began = time.monotonic()
        try:
            failed = await database_sync_to_async(replies.checkpoint)(states, leases)
        except Exception:
            metrics.CHECKPOINT_FAILURES.inc()
            log.exception("Could not checkpoint %d streaming replies", len(states) + len(leases))
            continue
        finally:
            metrics.CHECKPOINT_DURATION.observe(time.monotonic() - began)
        for reply_id, exc in failed:
            log.error("Could not checkpoint reply %s", reply_id, exc_info=exc)


def unsaved(running: dict) -> list[dict]:
    """The text of every reply in `running` that has more than its last save, for
    replies.checkpoint; each is counted as saved from here on."""
    states = []
    for generation in list(running.values()):
        if generation.seq == generation.persisted_seq:
            continue
        generation.persisted_seq = generation.seq
        states.append(
            {
                "id": generation.reply_id,
                "seq": generation.seq,
                "content": "".join(generation.content),
                "reasoning": "".join(generation.reasoning),
                "refusal": "".join(generation.refusal),
            }
        )
    return states


async def save_before_exit(running: dict) -> None:
    """The process is stopping: save what every streaming reply has beyond its last
    checkpoint, in one trip (chat.shutdown). They stay `streaming`: the next start (or
    another process, when the lease lapses) marks them interrupted with this text, and a
    reply that ends normally before the process exits is saved as usual."""
    states = unsaved(running)
    if not states:
        return
    failed = await database_sync_to_async(replies.checkpoint)(states, [])
    log.info("Saved streaming replies before stopping: %d", len(states) - len(failed))
    for reply_id, exc in failed:
        log.error("Could not save reply %s before stopping", reply_id, exc_info=exc)

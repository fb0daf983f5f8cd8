"""Frames for tabs on other worker processes (Redis channel layer): one message per round per process.

A reply streams in the process that owns it; a tab on another process follows it through
the channel layer. Each channels_redis message costs four Redis round trips to send and
four to receive, one receive at a time per process, so a message per delta per tab
saturated two workers at a modest load (docs/benchmark.md). Here every process
has one inbox channel; the owner collects, each round, every remote tab's new frames of
every reply it streams (coalesced, see chat.remote.RemoteTabs.collect) and sends each process
one message holding them all. The inbox's reader hands each frame to its socket.

Rounds run at once when the last was ROUND_INTERVAL ago or more, else when it is: an
idle process sends at once, a busy one at most 1 / ROUND_INTERVAL messages a second to
each other process, however many replies and tabs.

Each message carries `oldest`, the wall-clock time its oldest frame was ready to go (the
first wake after the last round), so the receiver can observe the fan-out lag
(chat.metrics.FANOUT_LAG) once per message, never per frame.
"""

import asyncio
import logging
import time
import weakref
from collections import defaultdict

from channels.layers import get_channel_layer

from chat import metrics
from chat.writers import keep_running

log = logging.getLogger(__name__)

ROUND_INTERVAL = 0.01  # seconds: at most 1 / ROUND_INTERVAL messages a second to each other process


class _State:
    """This process's side, per event loop (tests run several loops, one after another)."""

    def __init__(self) -> None:
        self.inbox: str | None = None
        self.inbox_ready: asyncio.Lock = asyncio.Lock()
        self.reader: asyncio.Task | None = None
        self.sockets: dict[str, object] = {}  # channel name -> this process's socket
        self.replies: set = set()  # chat.remote.RemoteTabs with frames for other processes' tabs
        self.wakeup = asyncio.Event()
        self.sender: asyncio.Task | None = None
        self.oldest: float | None = None  # time.time() of the first wake since the last round


_states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _State]" = weakref.WeakKeyDictionary()


def _state() -> _State:
    loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = _State()
    return state


# -- receiving: this process's tabs on replies other processes stream -----------------------
def register(socket) -> None:
    _state().sockets[socket.channel_name] = socket


def unregister(socket) -> None:
    _state().sockets.pop(socket.channel_name, None)


async def inbox() -> str:
    """This process's inbox channel (made on first use), which other processes send frames to."""
    state = _state()
    async with state.inbox_ready:
        if state.inbox is None or state.reader is None or state.reader.done():
            layer = get_channel_layer()
            state.inbox = await layer.new_channel()
            state.reader = asyncio.create_task(_read(state, state.inbox), name="fanout-inbox")
    return state.inbox


async def _read(state: _State, channel: str) -> None:
    layer = get_channel_layer()
    while True:
        try:
            message = await layer.receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis away: try again shortly; the tabs' watchdogs show what they missed
            log.exception("Could not read this process's fan-out inbox")
            await asyncio.sleep(1)
            continue
        metrics.fanout_arrived(message.get("oldest"))
        for item in message.get("items", ()):
            socket = state.sockets.get(item["channel"])
            if socket is None:
                continue  # closed since
            try:
                await socket.chat_frame(item)
            except Exception:  # one socket that went away must not keep frames from the others
                log.debug("Could not hand a fanned-out frame to a socket", exc_info=True)


# -- sending: tabs elsewhere on replies this process streams ----------------------------------
def wake(tabs) -> None:
    """A reply has frames for its remote tabs (new text, a new tab, or its end)."""
    state = _state()
    state.replies.add(tabs)
    if state.oldest is None:
        state.oldest = time.time()
    state.wakeup.set()
    state.sender = keep_running(state.sender, lambda: _send_rounds(state), "fanout-sender")


async def flushed(tabs) -> None:
    """Wait until a reply's last frames (its end) have been sent to its remote tabs."""
    wake(tabs)
    await tabs.flushed.wait()


async def _send_rounds(state: _State) -> None:
    last = float("-inf")
    while True:
        await state.wakeup.wait()
        wait = last + ROUND_INTERVAL - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        state.wakeup.clear()
        last = time.monotonic()
        try:
            await _round(state)
        except Exception:  # never let one bad round stop the fan-out for good
            log.exception("A fan-out round failed")
            for tabs in [t for t in state.replies if t.finals is not None]:
                state.replies.discard(tabs)  # they settle from the database
                tabs.flushed.set()


async def _round(state: _State) -> None:
    outbox: dict[str, list[dict]] = defaultdict(list)
    oldest, state.oldest = state.oldest, None
    done = []
    for tabs in list(state.replies):
        if tabs.collect(outbox):
            done.append(tabs)
    layer = get_channel_layer()
    for target, items in outbox.items():
        try:
            if target.startswith("socket:"):  # a tab whose process did not say its inbox
                for item in items:
                    await layer.send(target[7:], {"type": "chat.frame", **item})
            else:
                await layer.send(target, {"type": "chat.frames", "items": items, "oldest": oldest})
        except Exception:  # ChannelFull: that process stopped reading; its tabs settle from the DB
            log.info("Dropped the remote tabs behind %s", target, exc_info=True)
            for tabs in list(state.replies):
                tabs.drop(target)
    for tabs in done:
        state.replies.discard(tabs)
        tabs.flushed.set()

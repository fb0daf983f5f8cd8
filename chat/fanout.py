"""Frames for tabs on other worker processes (Redis): one message per round per process.

A reply streams in the process that owns it; a tab on another process follows it through
Redis. A channels_redis message costs several round trips to send (a Lua script) and to
receive (BZPOPMIN, one receive at a time per process), so a message per delta per tab
saturated two workers at a modest load (docs/benchmark.md). Here every process has one
inbox, a Redis pub/sub channel: the owner collects, each round, every remote tab's new
frames of every reply it streams (coalesced, see chat.remote.RemoteTabs.collect) and
publishes each process one message holding them all, and Redis pushes it to the reader.
The inbox needs no persistence: a process that is gone has no tabs to show anything.

A round runs as soon as a reply has something new, unless the last one began less than
ROUND_INTERVAL ago, and only one is in flight at a time: an idle process sends at once,
a busy one coalesces whatever arrived while its last round was being sent.

A message nobody received (the process is gone, or its reader is reconnecting to Redis)
is not lost silently: that process's tabs are sent a fresh resume once it listens again,
and forgotten if it stays deaf for DEAF_LIMIT (they settle from the database).

Each message carries `oldest`, the wall-clock time its oldest frame was ready to go (the
first wake after the last round), so the receiver can observe the fan-out lag
(chat.metrics.FANOUT_LAG) once per message, never per frame.
"""

import asyncio
import logging
import time
import uuid
import weakref
from collections import defaultdict

import msgpack
from channels.layers import get_channel_layer

from chat import cluster, metrics
from chat.writers import keep_running

log = logging.getLogger(__name__)

ROUND_INTERVAL = 0.001  # seconds: at most 1 / ROUND_INTERVAL messages a second to each other process
DEAF_RETRY = 0.2  # seconds between resumes offered to a process whose inbox had no reader
DEAF_LIMIT = 10.0  # seconds without a reader before that process's tabs are forgotten
SUBSCRIBE_WAIT = 5.0  # seconds an attach waits for this process's inbox to listen
RECONNECT_DELAY = 0.1  # seconds before the inbox subscribes again after losing Redis
# A quiet inbox asks Redis whether it is still there this often, and gives up on a connection
# that has not answered in PONG_WAIT: a connection that died silently (no reset from the
# network) would otherwise be read for ever, and the layer's connections time out a read
# after 15 s (chatsite/settings.py), which would drop a merely idle inbox.
QUIET = 5.0
PONG_WAIT = 5.0


class _State:
    """This process's side, per event loop (tests run several loops, one after another)."""

    def __init__(self) -> None:
        self.inbox = (
            f"{getattr(get_channel_layer(), 'prefix', 'asgi')}:fanout:{cluster.PROCESS_ID}:{uuid.uuid4().hex}"
        )
        self.listening = asyncio.Event()  # the inbox is subscribed: frames published now arrive
        self.reader: asyncio.Task | None = None
        self.sockets: dict[str, object] = {}  # channel name -> this process's socket
        self.replies: set = set()  # chat.remote.RemoteTabs with frames for other processes' tabs
        self.wakeup = asyncio.Event()
        self.sender: asyncio.Task | None = None
        self.oldest: float | None = None  # time.time() of the first wake since the last round
        self.deaf: dict[str, tuple[float, float]] = {}  # inbox -> (deaf since, next retry), monotonic
        self.retry: asyncio.TimerHandle | None = None  # the round that offers them their resume


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
    """This process's inbox (listening from first use), which other processes publish frames to."""
    state = _state()
    if state.reader is None or state.reader.done():
        state.reader = asyncio.create_task(_read(state), name="fanout-inbox")
    try:
        # Asking for frames before the inbox listens would lose the first ones.
        await asyncio.wait_for(state.listening.wait(), SUBSCRIBE_WAIT)
    except TimeoutError:  # Redis away: the owner finds nobody listening and resumes the tab later
        log.warning("This process's fan-out inbox is not listening yet")
    return state.inbox


def _redis(inbox: str):
    """The layer's client (its pool, its settings) for the Redis host an inbox lives on."""
    layer = get_channel_layer()
    return layer.connection(layer.consistent_hash(inbox))


async def _read(state: _State) -> None:
    while True:
        pubsub = _redis(state.inbox).pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(state.inbox)
            state.listening.set()
            while True:
                message = await pubsub.get_message(timeout=QUIET)
                if message is None:
                    await pubsub.ping()
                    message = await pubsub.get_message(timeout=PONG_WAIT)
                    if message is None:
                        raise ConnectionError("Redis did not answer the fan-out inbox's ping")
                if message["type"] == "message":
                    await _deliver(state, message["data"])
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis away: listen again; the owners resume what was missed
            log.exception("Lost this process's fan-out inbox; subscribing again")
        finally:
            state.listening.clear()
            await asyncio.shield(pubsub.aclose())
        await asyncio.sleep(RECONNECT_DELAY)


async def _deliver(state: _State, data: bytes) -> None:
    try:
        message = msgpack.unpackb(data)
        items = message["items"]
    except Exception:  # not one of ours: nothing to show, and the next message still counts
        log.warning("Ignored a malformed message on the fan-out inbox", exc_info=True)
        return
    metrics.fanout_arrived(message.get("oldest"))
    for item in items:
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
        # Deltas made in this same turn of the loop (a burst of replies) go in one round.
        await asyncio.sleep(0)
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
    now = time.monotonic()
    waiting = {target for target, (_since, retry) in state.deaf.items() if retry > now}
    done = []
    for tabs in list(state.replies):
        if tabs.collect(outbox, waiting):
            done.append(tabs)
    if waiting:
        _wake_later(state)
    layer = get_channel_layer()
    inboxes = defaultdict(list)  # Redis host -> [(inbox, message)]
    for target, items in outbox.items():
        if target.startswith("socket:"):  # a tab whose process did not say its inbox
            try:
                for item in items:
                    await layer.send(target[7:], {"type": "chat.frame", **item})
            except Exception:  # ChannelFull: that process stopped reading; its tabs settle from the DB
                log.info("Dropped the remote tabs behind %s", target, exc_info=True)
                _drop(state, target)
            continue
        data = msgpack.packb({"items": items, "oldest": oldest})
        inboxes[layer.consistent_hash(target)].append((target, data))
    for index, messages in inboxes.items():
        async with layer.connection(index).pipeline(transaction=False) as pipe:
            for target, data in messages:
                pipe.publish(target, data)
            heard = await pipe.execute()
        for (target, _data), readers in zip(messages, heard, strict=True):
            if readers:
                state.deaf.pop(target, None)
            else:
                _deaf(state, target, now)
    for tabs in done:
        state.replies.discard(tabs)
        tabs.flushed.set()


def _deaf(state: _State, target: str, now: float) -> None:
    """Nobody read that inbox: its process is gone, or its reader is reconnecting. Its tabs
    get a fresh resume once it listens again, or are forgotten past DEAF_LIMIT."""
    since = state.deaf.get(target, (now, now))[0]
    if now - since >= DEAF_LIMIT:
        log.info("Dropped the remote tabs behind %s: nobody read it for %s s", target, DEAF_LIMIT)
        state.deaf.pop(target, None)
        _drop(state, target)
        return
    state.deaf[target] = (since, now + DEAF_RETRY)
    for tabs in list(state.replies):
        tabs.missed(target)
    _wake_later(state)


def _drop(state: _State, target: str) -> None:
    for tabs in list(state.replies):
        tabs.drop(target)


def _wake_later(state: _State) -> None:
    """Another round after DEAF_RETRY, to offer the deaf inboxes their resume again."""
    if state.replies and (
        state.retry is None or state.retry.cancelled() or state.retry.when() <= time.monotonic()
    ):
        state.retry = asyncio.get_running_loop().call_later(DEAF_RETRY, state.wakeup.set)

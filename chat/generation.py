"""Running replies: one asyncio task per reply, owned by the process, not by a socket.

A socket only watches a conversation. Closing every tab leaves the reply
running to the end; `stop` from any tab (any process) cancels it. Deltas go
straight to this process's sockets; other processes' sockets (Redis channel
layer) get them coalesced through chat.fanout, one message per round per process.
Text is persisted by one checkpoint task per process, about once a second for all
replies.
"""

import asyncio
import functools
import json
import logging
import time
import uuid
from collections import defaultdict

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from chat import fanout, replies, tokens, upstream
from chat.budgets import BudgetExceeded
from chat.models import Conversation, Message
from chat.rendering import complete_blocks, render_markdown
from chat.upstream import ChatStream, Retry, UpstreamError

Status = Message.Status

log = logging.getLogger(__name__)

_running: dict[int, "Generation"] = {}  # conversation id -> the reply this process streams
_watchers: dict[int, set] = defaultdict(set)  # conversation id -> this process's sockets on it
_checkpointer: asyncio.Task | None = None
_swept = False
PROCESS_ID = uuid.uuid4().hex


def single_process() -> bool:
    """With the in-memory channel layer, no other process can be streaming anything."""
    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    return backend.endswith("InMemoryChannelLayer")


def gen_group(conversation_id: int) -> str:
    return f"chat-gen-{conversation_id}"


def conv_group(conversation_id: int) -> str:
    return f"chat-conv-{conversation_id}"


def frame(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


TEXT_DELTA = "+"


def text_delta(content: str) -> str:
    """The live delta of plain reply text: `+` and the text, no JSON (docs/protocol.md).

    Its reply and seq are implied: the reply the socket last got a start, resume or delta
    of, and the seq after that frame's. Every live piece reaches a socket in order right
    after its previous frame (a lagging socket is caught up with JSON deltas first), so
    the implication holds. A 4-character token costs 7 bytes on the wire, not 63.
    """
    return TEXT_DELTA + content


def live_ids() -> list[int]:
    return [g.reply_id for g in _running.values()]


class Generation:
    def __init__(self, turn: replies.Turn, request_id: str | None = None) -> None:
        self.turn = turn
        self.request_id = request_id  # the asking frame's "id", echoed in the start frame
        self.conversation_id = turn.conversation_id
        self.reply_id = turn.reply_id
        self.content: list[str] = []  # one entry per delta: content[seq - 1]
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.seq = 0
        self.persisted_seq = 0
        self.started = time.monotonic()
        self.ttft_ms: float | None = None
        self.finals: list[str] | None = None  # the error/done frames, once the reply has ended
        # Markdown while streaming: content[:rendered_chars] is sent as sanitised HTML in
        # `render` frames, whole blocks at a time (chat.rendering.complete_blocks).
        self.rendered_chars = 0
        self.rendered_units = 0  # the same length in UTF-16 code units, as the browser counts
        self.rendered_html: list[str] = []
        self.render_task: asyncio.Task | None = None
        self.render_again = False
        self.last_render = 0.0
        self.render_checked = 0  # pieces looked at for newlines
        self.task: asyncio.Task | None = None
        self.channel: str | None = None  # for attach/stop requests from other processes
        self.remote: dict[str, int] = {}  # other processes' sockets -> last seq sent
        self.remote_pending: set[str] = set()  # attached, resume not yet sent
        self.remote_target: dict[str, str] = {}  # such a socket -> its process's inbox (chat.fanout)
        self.remote_finals: list[str] | None = None  # the end, once the reply is over
        self.remote_flushed = asyncio.Event()  # ... and once that end has been sent
        self.listener: asyncio.Task | None = None  # attach/stop requests from other processes
        self.announcing: asyncio.Task | None = None  # open_remote, beside the model's request
        self.stop_requested = False

    # -- what sockets see ---------------------------------------------------------
    def start_frame(self) -> str:
        return frame(
            type="start",
            message_id=self.reply_id,
            user_message=self.turn.user_message,
            replaces=self.turn.replaces,
            model=self.turn.target.label,
            prompt_tokens=self.turn.prompt_tokens,
            trimmed=self.turn.trimmed,
            budget=self.turn.budget,
            replaces_user=self.turn.replaces_user,
            request_id=self.request_id,
        )

    def resume_frames(self) -> list[str]:
        """The reply so far: a `resume`, then deltas if it is too long for one frame."""
        return self.span_frames(0, self.seq)

    def span_frames(self, start: int, end: int) -> list[str]:
        return span_frames(self.reply_id, self.content, self.reasoning, self.refusal, start, end)

    def batch_frames(self, start: int, budget: int) -> tuple[list[str], int]:
        """The pieces after `start`, up to about `budget` characters (at least one), as frames;
        and the seq they reach. For catching up a reader that fell behind."""
        end, size = start, 0
        while end < self.seq and (end == start or size < budget):
            size += len(self.content[end]) + len(self.reasoning[end]) + len(self.refusal[end])
            end += 1
        return self.span_frames(start, end), end

    async def broadcast(self, text: str, delta: bool = False) -> None:
        """Send a frame to this process's sockets now; wake the fan-out for other processes'."""
        await send_local(self.conversation_id, text, delta_of=self if delta else None)
        if self.remote or self.remote_pending:
            fanout.wake(self)

    # -- the reply ----------------------------------------------------------------
    async def run(self) -> None:
        target = self.turn.target
        stream = ChatStream(
            target.provider,
            target.model,
            self.turn.prompt,
            include_usage=target.include_usage,
            stream=target.stream,
            api_style=target.api_style,
            on_retry=self._on_retry,
        )
        status, finish_reason, error = Message.Status.FINISHED, "", None
        try:
            if self.stop_requested:  # stopped from another process before this task began
                raise asyncio.CancelledError
            async for piece in stream:
                await self._append(piece)
            finish_reason = stream.finish_reason or "stop"
        except UpstreamError as exc:
            interrupted = exc.code in ("upstream_interrupted",)
            status = Message.Status.INTERRUPTED if interrupted else Message.Status.FAILED
            finish_reason = "interrupted" if interrupted else "error"
            error = (exc.code, exc.detail)
            log.warning("Reply %s failed: %s (%s)", self.reply_id, exc.code, exc.detail)
        except asyncio.CancelledError:
            status, finish_reason = Message.Status.CANCELLED, "cancelled"
        except Exception:
            log.exception("Reply %s failed inside the app", self.reply_id)
            status, finish_reason = Message.Status.FAILED, "error"
            error = ("internal_error", "Something went wrong on the server; the reply so far was kept.")
        await asyncio.shield(self._finish(stream, status, finish_reason, error))

    async def _append(self, piece) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.monotonic() - self.started) * 1000
        self.seq += 1
        self.content.append(piece.content)
        self.reasoning.append(piece.reasoning)
        self.refusal.append(piece.refusal)
        if piece.reasoning or piece.refusal:
            text = frame(
                type="delta",
                message_id=self.reply_id,
                seq=self.seq,
                content=piece.content,
                **_extra("reasoning", [piece.reasoning]),
                **_extra("refusal", [piece.refusal]),
            )
        else:
            text = text_delta(piece.content)
        await self.broadcast(text, delta=True)
        self._want_render()

    def _want_render(self) -> None:
        """A block can only have finished if a newline arrived: then render within
        RENDER_INTERVAL, even if the stream pauses right after it."""
        fresh, self.render_checked = self.content[self.render_checked :], len(self.content)
        if not any("\n" in piece for piece in fresh):
            return
        if self.render_task is None or self.render_task.done():
            self.render_task = asyncio.create_task(self._render_soon())  # kept: tasks are weakly held
        else:
            self.render_again = True

    async def _render_soon(self) -> None:
        while True:
            wait = self.last_render + RENDER_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.render_again = False
            await self._render()
            if not self.render_again:
                return

    async def _render(self) -> None:
        """Render the blocks completed since the last render (never the whole reply again),
        off the event loop, and send them as a `render` frame."""
        try:
            text = "".join(self.content)
            end = complete_blocks(text, self.rendered_chars)
            if end > self.rendered_chars:
                span = text[self.rendered_chars : end]
                html = await asyncio.to_thread(render_markdown, span)
                start = self.rendered_units
                self.rendered_chars = end
                self.rendered_units += len(span.encode("utf-16-le")) // 2
                self.rendered_html.append(html)
                text = frame(
                    type="render",
                    message_id=self.reply_id,
                    chars=self.rendered_units,
                    html=html,
                    **{"from": start},
                )
                await send_local(self.conversation_id, text, droppable=True)
        except Exception:
            log.exception("Could not render reply %s while streaming", self.reply_id)
        finally:
            self.last_render = time.monotonic()

    def render_frame(self) -> str | None:
        """Everything rendered so far, for a socket that joined mid-reply (after its resume)."""
        if not self.rendered_chars:
            return None
        return frame(
            type="render",
            message_id=self.reply_id,
            chars=self.rendered_units,
            html="".join(self.rendered_html),
            **{"from": 0},
        )

    async def _on_retry(self, retry: Retry) -> None:
        await self.broadcast(
            frame(
                type="retrying",
                message_id=self.reply_id,
                attempt=retry.attempt,
                delay=round(retry.delay, 2),
                detail=retry.reason,
            )
        )

    async def _finish(self, stream: ChatStream, status: str, finish_reason: str, error) -> None:
        fields = dict(
            status=status,
            finish_reason=finish_reason,
            content="".join(self.content),
            reasoning="".join(self.reasoning),
            refusal="".join(self.refusal),
            seq=self.seq,
            usage=stream.usage,
            ttft_ms=self.ttft_ms,
            duration_ms=(time.monotonic() - self.started) * 1000,
            error_code=error[0] if error else "",
            error_detail=error[1] if error else "",
            target=self.turn.target,
        )
        if stream.response_model:
            fields["model"] = stream.response_model
        try:
            # Counted here, not by finish_many on the database thread every socket shares.
            target = self.turn.target
            fields["token_count"] = await _encode(
                len(fields["content"]), tokens.count_tokens, fields["content"], target.model, target.encoding
            )
            saved = await _finishes((self.reply_id, fields))
        except Exception:
            # Leave it streaming: the lease runs out and recovery marks it interrupted
            # with the last checkpoint, rather than losing the reply silently here.
            log.exception("Could not save reply %s", self.reply_id)
            saved = fields
        finally:
            _running.pop(self.conversation_id, None)
        finals = end_frames(
            self.reply_id,
            status=status,
            finish_reason=finish_reason,
            prompt_tokens=self.turn.prompt_tokens,
            completion_tokens=saved.get("completion_tokens"),
            ttft_ms=self.ttft_ms,
            duration_ms=fields["duration_ms"],
            usage=stream.usage,
            error=error,
        )
        self.finals = finals  # a socket still catching up sends them after the text it missed
        for socket in list(_watchers.get(self.conversation_id, ())):
            if socket.catching_up is not None:
                continue
            try:
                for text in finals:
                    await socket.send_frame(text)
            except OSError:  # a socket that went away must not keep the end from the others
                log.debug("Could not send a reply's end to a socket", exc_info=True)
            except Exception:  # nor one that could not take a frame; that is a bug to see
                log.exception("Could not send reply %s's end to a socket", self.reply_id)
        if self.announcing is not None:
            await self.announcing  # a reply that ends fast must find its listener to close
        await self._close_remote(finals)

    # -- other processes -------------------------------------------------------------
    async def announce(self) -> None:
        try:
            await self.open_remote()
        except Exception:  # Redis away: stream to this process's tabs; others catch up from the DB
            log.exception("Could not announce reply %s to other processes", self.reply_id)

    async def open_remote(self) -> None:
        """Take attach/stop requests from sockets in other worker processes."""
        layer = get_channel_layer()
        # The default prefix, like the consumers': channels_redis has one receive lock per
        # process and the holder only pops its own prefix's queue, so a second prefix
        # starved the sockets (or this listener) until a message for the holder came.
        self.channel = await layer.new_channel()
        await layer.group_add(gen_group(self.conversation_id), self.channel)
        self.listener = asyncio.create_task(self._listen())
        await layer.group_send(
            conv_group(self.conversation_id),
            {
                "type": "chat.started",
                "frame": self.start_frame(),
                "process": PROCESS_ID,
            },
        )

    async def _listen(self) -> None:
        layer = get_channel_layer()
        while True:
            try:
                message = await layer.receive(self.channel)
            except Exception:  # Redis away for a moment: listen again rather than never
                log.exception("Could not read attach/stop requests for reply %s", self.reply_id)
                await asyncio.sleep(1)
                continue
            kind = message.get("type")
            if kind == "chat.attach":
                channel = message["channel"]
                self.remote_pending.add(channel)
                # A process that does not say its inbox gets a message per frame per tab.
                self.remote_target[channel] = message.get("inbox") or f"socket:{channel}"
                fanout.wake(self)
            elif kind == "chat.detach":
                self.remote.pop(message["channel"], None)
                self.remote_pending.discard(message["channel"])
                self.remote_target.pop(message["channel"], None)
            elif kind == "chat.stop":
                self.stop()

    def collect_remote(self, outbox: dict[str, list[dict]]) -> bool:
        """Put the frames other processes' tabs have not had yet in `outbox` (per inbox): a
        resume for a tab that just attached, else one delta of all it missed since the
        last round; then, once the reply is over, its end. True when that end is in."""
        for channel in list(self.remote_pending):
            self.remote_pending.discard(channel)
            self.remote[channel] = self.seq
            for text in self.resume_frames():
                outbox[self.remote_target[channel]].append(self._remote_item(channel, text))
        seq = self.seq
        for channel, sent in list(self.remote.items()):
            if sent < seq:
                self.remote[channel] = seq
                for text in self.span_frames(sent, seq):
                    outbox[self.remote_target[channel]].append(self._remote_item(channel, text))
        if self.remote_finals is None:
            return False
        for text in self.remote_finals:
            for channel in self.remote:
                outbox[self.remote_target[channel]].append(self._remote_item(channel, text, final=True))
        return True

    def _remote_item(self, channel: str, text: str, final: bool = False) -> dict:
        return {"channel": channel, "frame": text, "final": final, "message_id": self.reply_id}

    def drop_remote(self, target: str) -> None:
        """Forget the tabs behind an inbox that stopped taking messages (they settle from the
        database when the reply ends)."""
        for channel in [c for c, t in self.remote_target.items() if t == target]:
            self.remote.pop(channel, None)
            self.remote_pending.discard(channel)
            del self.remote_target[channel]

    async def _close_remote(self, finals: list[str]) -> None:
        if self.listener is None:
            return
        self.listener.cancel()
        # The fan-out sends what the tabs elsewhere have not had, then the end, in order.
        self.remote_finals = finals
        await fanout.flushed(self)
        await get_channel_layer().group_discard(gen_group(self.conversation_id), self.channel)

    def stop(self) -> None:
        self.stop_requested = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


RENDER_INTERVAL = 0.25  # seconds between Markdown renders of a streaming reply
FRAME_CHARS = 128 * 1024  # daphne (autobahn) will not send a websocket message over 1 MiB


def span_frames(message_id: int, content, reasoning, refusal, start: int, end: int) -> list[str]:
    """Pieces start..end of a reply (seq start+1 … end) as frames of at most about FRAME_CHARS:
    from the start, a `resume` then deltas; otherwise deltas. A frame's seq is its last piece's."""
    frames, low, size = [], start, 0

    def cut(high: int) -> str:
        if start == 0 and not frames:
            return frame(
                type="resume",
                message_id=message_id,
                content="".join(content[:high]),
                reasoning="".join(reasoning[:high]),
                refusal="".join(refusal[:high]),
                seq=high,
            )
        return frame(
            type="delta",
            message_id=message_id,
            seq=high,
            content="".join(content[low:high]),
            **_extra("reasoning", reasoning[low:high]),
            **_extra("refusal", refusal[low:high]),
        )

    for index in range(start, end):
        piece = len(content[index]) + len(reasoning[index]) + len(refusal[index])
        if index > low and size + piece > FRAME_CHARS:
            frames.append(cut(index))
            low, size = index, 0
        size += piece
    if low < end or not frames and start == 0:
        frames.append(cut(end))
    return frames


def saved_text_frames(reply: Message) -> list[str]:
    """A saved reply's text as `resume` (+ deltas when long), cut into FRAME_CHARS pieces."""
    texts = (reply.content, reply.reasoning, reply.refusal)
    count = max(1, *(-(-len(text) // FRAME_CHARS) for text in texts))
    pieces = [[text[i * FRAME_CHARS : (i + 1) * FRAME_CHARS] for i in range(count)] for text in texts]
    return span_frames(reply.id, *pieces, 0, count)


def _extra(name: str, parts: list[str]) -> dict:
    text = "".join(parts)
    return {name: text} if text else {}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- what the consumer calls ------------------------------------------------------------
async def send_local(
    conversation_id: int, text: str, delta_of: "Generation | None" = None, droppable: bool = False
) -> None:
    """A frame to this process's sockets on the conversation. Deltas (`delta_of` set) may be
    skipped for a socket whose reader is far behind; it is caught up with a resume."""
    for socket in list(_watchers.get(conversation_id, ())):
        try:
            if droppable and (socket.catching_up is not None or socket.lag.over()):
                continue  # a nicety (rendered Markdown) a lagging reader can do without
            if delta_of is None:
                await socket.send_frame(text)
            else:
                await socket.send_delta(text, delta_of)
        except OSError:  # the connection is gone: stop feeding it (it must not hurt the reply)
            log.debug("Dropped a socket whose connection failed", exc_info=True)
            _watchers[conversation_id].discard(socket)
        except Exception:
            # Not the connection: this frame could not be sent (a bug, or text that should
            # have been made storable). Dropping the socket would leave an open tab that
            # never hears of a reply again, so it stays a watcher (issue #12).
            log.exception("Could not send a frame to a socket on conversation %s", conversation_id)


async def watch(socket, conversation_id: int) -> None:
    """A socket opened on a conversation: follow it, and catch up on a streaming reply."""
    global _swept
    if not single_process():
        fanout.register(socket)
        await get_channel_layer().group_add(conv_group(conversation_id), socket.channel_name)
    swept = []
    if not _swept:  # once per process: replies left streaming by a dead process
        _swept = True
        upstream.warm_up()
        swept = await database_sync_to_async(replies.recover_stale)(None, live_ids())
    generation = _running.get(conversation_id)
    _watchers[conversation_id].add(socket)
    if generation is not None:
        for text in generation.resume_frames():
            await socket.send_frame(text)
        rendered = generation.render_frame()
        if rendered is not None:
            await socket.send_frame(rendered)
        await _show_ended(swept)
        return
    swept += await database_sync_to_async(replies.recover_stale)(conversation_id, live_ids())
    await _show_ended(swept)
    if not single_process():
        streaming = await Message.objects.filter(
            conversation_id=conversation_id, status=Status.STREAMING
        ).afirst()
        if streaming is not None:
            await attach_remote(socket, conversation_id, streaming.id)


async def unwatch(socket, conversation_id: int) -> None:
    _watchers[conversation_id].discard(socket)
    if not _watchers[conversation_id]:
        del _watchers[conversation_id]
    if not single_process():
        fanout.unregister(socket)
        layer = get_channel_layer()
        await layer.group_discard(conv_group(conversation_id), socket.channel_name)
        await layer.group_send(
            gen_group(conversation_id), {"type": "chat.detach", "channel": socket.channel_name}
        )


async def attach_remote(socket, conversation_id: int, reply_id: int) -> None:
    """Ask the process streaming this reply to send this socket a resume and then its deltas."""
    await get_channel_layer().group_send(
        gen_group(conversation_id),
        {"type": "chat.attach", "channel": socket.channel_name, "inbox": await fanout.inbox()},
    )
    socket.watch_remote_reply(reply_id)


async def on_started(socket, event: dict, conversation_id: int) -> None:
    """Another process started a reply in this conversation (Redis layer only)."""
    if event["process"] == PROCESS_ID:
        return  # this process's sockets got the start frame directly
    await socket.send_frame(event["frame"])
    await attach_remote(socket, conversation_id, json.loads(event["frame"])["message_id"])


async def settle_remote(conversation_id: int, reply_id: int) -> list[str] | None:
    """For a socket following a reply in another process that has gone quiet: if the reply
    ended (or its process died), the frames that show its final state; None while it streams."""
    await database_sync_to_async(replies.recover_stale)(conversation_id, live_ids())
    reply = await Message.objects.filter(pk=reply_id).afirst()
    if reply is None or reply.status == Status.STREAMING:
        return None
    return final_frames(reply)


async def _show_ended(reply_ids: list[int]) -> None:
    """Replies just found dead: pages and sockets opened before may still show them
    streaming (a tab reconnecting after a restart reloads its list while this runs)."""
    if not reply_ids:
        return
    async for reply in Message.objects.filter(pk__in=reply_ids):
        finals = final_frames(reply)
        for socket in list(_watchers.get(reply.conversation_id, ())):
            try:
                await socket.show_ended(reply.id, finals)
            except OSError:  # a socket that went away must not stop the others
                log.debug("Could not show an ended reply to a socket", exc_info=True)
            except Exception:  # nor one that could not take a frame; that is a bug to see
                log.exception("Could not show ended reply %s to a socket", reply.id)


def final_frames(reply: Message) -> list[str]:
    """The frames that show an ended reply as saved: resume (its whole text), error, done."""
    return saved_text_frames(reply) + end_frames(
        reply.id,
        status=reply.status,
        finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        ttft_ms=reply.ttft_ms,
        duration_ms=reply.duration_ms,
        usage=reply.usage,
        error=(reply.error_code, reply.error_detail) if reply.error_code else None,
    )


def end_frames(message_id: int, *, error: tuple[str, str] | None, ttft_ms, duration_ms, **done) -> list[str]:
    """How a reply's end looks on the wire, live or read back: an `error` (if it failed), `done`."""
    frames = []
    if error:
        frames.append(frame(type="error", code=error[0], detail=error[1], message_id=message_id))
    frames.append(
        frame(
            type="done",
            message_id=message_id,
            **done,
            ttft_ms=_round(ttft_ms),
            duration_ms=_round(duration_ms),
        )
    )
    return frames


BUSY = "A reply is still being written. Stop it or wait for it to finish."
DELETED = "This conversation was deleted (in another tab?). Nothing was saved."
DATABASE_ERROR = (
    "The server could not save your message just now (its database is busy). Nothing was saved; try again."
)


async def send(socket, conversation, content: str, request_id: str | None = None) -> None:
    await _begin(socket, conversation, replies.begin_turn, content, request_id=request_id)


async def regenerate(socket, conversation, request_id: str | None = None) -> None:
    await _begin(socket, conversation, replies.begin_regenerate, request_id=request_id)


async def edit(socket, conversation, content: str, request_id: str | None = None) -> None:
    await _begin(socket, conversation, replies.begin_edit, content, request_id=request_id)


SMALL_TEXT = 256  # characters: encoded on the event loop (~10 µs) rather than paying a thread hop


async def _begin(socket, conversation, begin, *args, request_id: str | None = None) -> None:
    """Count the send's tokens, save the turn (replies.begin_*), then start streaming;
    refusals become error frames.

    Counting happens here, not in begin_* on the database thread every socket shares
    (issue #12: long system prompts counted there held up other users' sends for
    seconds). The model and system prompt are the socket's last knowledge of them; if
    they changed, begin_* says so (Uncounted) before writing, and we count again."""
    if conversation.id in _running or conversation.id in _queued:
        await socket.send_error("busy", BUSY)
        return
    content = args[0] if args else None
    model, encoding, system = getattr(socket, "counting", None) or (
        conversation.model or settings.CHAT_MODEL,
        "",
        conversation.system_prompt or settings.CHAT_SYSTEM_PROMPT,
    )
    try:
        for attempt in (1, 2, 3):
            # A third attempt (the settings changed twice while we counted) counts where it runs.
            counted = await _count_ahead(model, encoding, content, system) if attempt < 3 else None
            try:
                await _save_turn(
                    functools.partial(begin, counted=counted), conversation, *args, request_id=request_id
                )
                return
            except replies.Uncounted as exc:
                model, encoding, system = exc.model, exc.encoding, exc.system
                socket.counting = (model, encoding, system)
    except replies.Busy:
        await socket.send_error("busy", BUSY)
    except replies.TooManyReplies:
        await socket.send_error(
            "too_many_replies",
            f"You have {settings.CHAT_MAX_REPLIES_PER_USER} replies being written already. "
            "Wait for one to finish or stop one, then try again.",
        )
    except replies.NothingToRegenerate:
        await socket.send_error("nothing_to_regenerate", "There is no message to answer again or edit yet.")
    except BudgetExceeded as exc:
        await socket.send_error(exc.code, exc.detail)
    except Conversation.DoesNotExist:  # replies._fresh: deleted in another tab since this socket opened
        await socket.send_error("conversation_deleted", DELETED)
    except DatabaseError:
        # The turn's savepoint (or the whole batch's transaction) was rolled back: nothing
        # of it is saved. Locked for longer than the busy timeout, or the database away.
        log.exception("Could not save a turn in conversation %s", conversation.id)
        await socket.send_error("database_error", DATABASE_ERROR)
    except Exception:  # a frame answered, never a socket closed with 1011
        log.exception("Could not begin a reply in conversation %s", conversation.id)
        await socket.send_error("internal_error", "Something went wrong on the server. Try again.")


async def _count_ahead(model: str, encoding: str, content: str | None, system: str) -> replies.Counted:
    """replies.count_ahead, off the database thread."""
    size = len(content or "")
    if system and tokens.system_prompts.get(system, model, encoding) is None:
        size += len(system)
    return await _encode(size, replies.count_ahead, model, encoding, content, system)


async def _encode(size: int, count, *args):
    """Run a token count of `size` characters: on the event loop when it is short enough
    that a thread hop would cost more, else on the one counting thread (tokens.counting)."""
    if size <= SMALL_TEXT:
        return count(*args)
    return await tokens.counting(count, *args)


class Batched:
    """Database calls that arrive while the database thread works on earlier ones, run
    together in one trip: `run_many(items)` returns a result or an exception per item."""

    def __init__(self, run_many) -> None:
        self.run_many = run_many
        self.items: list[tuple[object, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def __call__(self, item):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.items = [(i, f) for i, f in self.items if f.get_loop() is loop]  # not a finished loop's
            self.task = loop.create_task(self._drain())
        self.items.append((item, future))
        try:
            return await asyncio.shield(future)  # the write happens even if the caller goes away
        except asyncio.CancelledError:
            future.add_done_callback(_outcome_seen)
            raise

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


_finishes = Batched(replies.finish_many)
# conversation id -> (begin, conversation, *args, (future, request_id)), in order
_queued: dict[int, tuple] = {}
_turn_writer: asyncio.Task | None = None
STARTS_PER_TURN = 8  # replies of a batch started before the loop sees to the sockets again


async def _save_turn(begin, conversation, *args, request_id: str | None = None) -> Generation:
    """replies.begin_*, then _start. Batched: the sends that arrive while the database thread
    saves earlier ones are saved together by one writer task (replies.begin_many)."""
    global _turn_writer
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    _queued[conversation.id] = (begin, conversation, *args, (future, request_id))
    if _turn_writer is None or _turn_writer.done() or _turn_writer.get_loop() is not loop:
        _turn_writer = loop.create_task(_write_turns(), name="turn-writer")
    try:
        # Shielded: if the socket goes away now, its reply is still saved and started (a
        # reply belongs to the process, not to the socket that asked for it).
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_outcome_seen)
        raise


def _outcome_seen(future: asyncio.Future) -> None:
    """A send whose socket went away: its refusal (if any) has no one to show it to."""
    if not future.cancelled():
        future.exception()


async def _write_turns() -> None:
    while _queued:
        batch = list(_queued.values())
        try:
            results = await database_sync_to_async(replies.begin_many)(
                [call[:-1] for call in batch], live_ids()
            )
        except Exception as exc:  # the batch's commit failed: nothing of it was saved
            results = [(False, exc)] * len(batch)
        for started, (call, (saved, value)) in enumerate(zip(batch, results, strict=True), 1):
            future, request_id = call[-1]
            # Out of the queue and into _running with no await between: a second send to
            # the conversation is refused as busy all along.
            del _queued[call[1].id]
            if not saved:
                future.set_exception(value)
                continue
            try:
                future.set_result(await _start(value, request_id))
            except Exception as exc:
                log.exception("Could not start reply %s", value.reply_id)
                future.set_exception(exc)
            if started % STARTS_PER_TURN == 0:
                # Their model requests begin in the next turn of the loop, beside the sockets'
                # reads and writes: hundreds begun in one turn (~0.3 ms each) held every
                # streaming reply's deltas until the last had begun.
                await asyncio.sleep(0)


async def stop(socket, conversation_id: int) -> None:
    generation = _running.get(conversation_id)
    if generation is not None:
        generation.stop()
        return
    if (
        not single_process()
        and await Message.objects.filter(conversation_id=conversation_id, status=Status.STREAMING).aexists()
    ):
        await get_channel_layer().group_send(gen_group(conversation_id), {"type": "chat.stop"})
        return
    await socket.send_error("not_streaming", "Nothing is being written right now.")


async def _start(turn: replies.Turn, request_id: str | None = None) -> Generation:
    generation = Generation(turn, request_id)
    _running[turn.conversation_id] = generation
    await generation.broadcast(generation.start_frame())
    if not single_process():
        # Beside the model's request, not before it: its Redis round trips added ~1.4 ms to
        # every first token, and a burst of sends started one reply per announcement.
        generation.announcing = asyncio.create_task(generation.announce())
    generation.task = asyncio.create_task(generation.run(), name=f"reply-{turn.reply_id}")
    _ensure_checkpointer()
    return generation


def _ensure_checkpointer() -> None:
    global _checkpointer
    loop = asyncio.get_running_loop()
    if _checkpointer is None or _checkpointer.done() or _checkpointer.get_loop() is not loop:
        _checkpointer = loop.create_task(_checkpoint_loop(), name="reply-checkpoints")


async def _checkpoint_loop() -> None:
    """Every CHAT_CHECKPOINT_INTERVAL: renew the leases of every reply and save their new
    text, in one trip to the database for the whole process (never one write per delta)."""
    while True:
        await asyncio.sleep(settings.CHAT_CHECKPOINT_INTERVAL)
        states, leases = [], []
        for generation in list(_running.values()):
            if generation.seq == generation.persisted_seq:
                leases.append(generation.reply_id)
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
        if not states and not leases:
            continue
        try:
            failed = await database_sync_to_async(replies.checkpoint)(states, leases)
        except Exception:
            log.exception("Could not checkpoint %d streaming replies", len(states) + len(leases))
            continue
        for reply_id, exc in failed:
            log.error("Could not checkpoint reply %s", reply_id, exc_info=exc)

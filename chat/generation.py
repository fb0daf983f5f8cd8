"""A reply being written: the model's pieces become its text, its frames, its end.

One asyncio task per reply, owned by the process (chat.worker), not by a socket: closing
every tab leaves it running to the end, and `stop` from any tab cancels it. Each piece
goes straight to this process's sockets (chat.relay) and, coalesced, to other processes'
(chat.remote, chat.fanout). Finished blocks of Markdown are rendered off the event loop
and sent as `render` frames. The text is saved by the process's checkpoint loop
(chat.writers) while it streams, and once more when it ends.
"""

import asyncio
import logging
import time

from chat import attachments, early, fanout, frames, metrics, titles, tokens
from chat.frames import text_delta
from chat.models import Message
from chat.relay import Watchers
from chat.remote import RemoteTabs
from chat.rendering import complete_blocks, render_markdown
from chat.replies import Turn
from chat.upstream import ChatStream, Retry, UpstreamError

log = logging.getLogger(__name__)

RENDER_INTERVAL = 0.25  # seconds between Markdown renders of a streaming reply


class Generation:
    """One reply while it streams. `worker` is the process's chat.worker.Worker: where its
    frames go (`watchers`), where it is listed while it runs, and how its end is saved."""

    def __init__(
        self,
        turn: Turn,
        worker,
        request_id: str | None = None,
        stream: ChatStream | None = None,
        started: float | None = None,
    ) -> None:
        self.turn = turn
        self.stream = stream  # the request sent while the turn was saved (chat.early), if any
        self.worker = worker
        self.watchers: Watchers = worker.watchers
        self.conversation_id = turn.conversation_id
        self.reply_id = turn.reply_id
        self.request_id = request_id  # the asking tab's id for it (docs/protocol.md)
        self.content: list[str] = []  # one entry per delta: content[seq - 1]
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.seq = 0
        self.persisted_seq = 0  # saved up to here (chat.writers.checkpoints)
        self.started = started or time.monotonic()  # when the provider was asked
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
        self.remote: RemoteTabs | None = None  # tabs in other processes (Redis layer only)
        self.stop_requested = False

    # -- what sockets see ---------------------------------------------------------
    def start_frame(self) -> str:
        return frames.start_frame(self.turn, self.request_id)

    def resume_frames(self) -> list[str]:
        """The reply so far: a `resume`, then deltas if it is too long for one frame."""
        return self.span_frames(0, self.seq)

    def span_frames(self, start: int, end: int) -> list[str]:
        return frames.span_frames(self.reply_id, self.content, self.reasoning, self.refusal, start, end)

    def batch_frames(self, start: int, budget: int) -> tuple[list[str], int]:
        """The pieces after `start`, up to about `budget` characters (at least one), as frames;
        and the seq they reach. For catching up a reader that fell behind."""
        end, size = start, 0
        while end < self.seq and (end == start or size < budget):
            size += len(self.content[end]) + len(self.reasoning[end]) + len(self.refusal[end])
            end += 1
        return self.span_frames(start, end), end

    def render_frame(self) -> str | None:
        """Everything rendered so far, for a socket that joined mid-reply (after its resume)."""
        if not self.rendered_chars:
            return None
        return frames.render_frame(self.reply_id, 0, self.rendered_units, "".join(self.rendered_html))

    async def broadcast(self, text: str, droppable: bool = False) -> None:
        """A frame to this process's sockets now; wake the fan-out for other processes'."""
        await self.watchers.send(self.conversation_id, text, droppable)
        self._wake_remote()

    def _wake_remote(self) -> None:
        remote = self.remote
        if remote is not None and (remote.sent or remote.pending):
            fanout.wake(remote)

    # -- the reply ----------------------------------------------------------------
    async def run(self) -> None:
        target = self.turn.target
        stream = self.stream or ChatStream(
            target.provider,
            target.model,
            self.turn.prompt,
            include_usage=target.include_usage,
            stream=target.stream,
            api_style=target.api_style,
        )
        stream.on_retry = self._on_retry  # retries before this reply existed were shown to no one
        status, finish_reason, error = Message.Status.FINISHED, "", None
        try:
            if self.stop_requested:  # stopped from another process before this task began
                raise asyncio.CancelledError
            if attachments.has_images(stream.messages):
                # Images' bytes are read from storage now, for this request only (a Turn
                # holds references to them).
                stream.messages = await attachments.inline_images(stream.messages)
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
        stream.abandon()  # a request sent early that was never read: stopped before it began
        await asyncio.shield(self._finish(stream, status, finish_reason, error))

    async def _append(self, piece) -> None:
        """One piece from the model: the hot path of every delta."""
        if self.ttft_ms is None:
            waited = time.monotonic() - self.started
            self.ttft_ms = waited * 1000
            metrics.TIME_TO_FIRST_TOKEN.observe(waited)
        self.seq += 1
        self.content.append(piece.content)
        self.reasoning.append(piece.reasoning)
        self.refusal.append(piece.refusal)
        if piece.reasoning or piece.refusal:
            text = frames.piece_delta(self.reply_id, self.seq, piece.content, piece.reasoning, piece.refusal)
        else:
            text = text_delta(piece.content)
        await self.watchers.send_delta(self.conversation_id, text, self)
        remote = self.remote
        if remote is not None and (remote.sent or remote.pending):
            fanout.wake(remote)
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
                rendered = frames.render_frame(self.reply_id, start, self.rendered_units, html)
                await self.watchers.send(self.conversation_id, rendered, droppable=True)
        except Exception:
            log.exception("Could not render reply %s while streaming", self.reply_id)
        finally:
            self.last_render = time.monotonic()

    async def _on_retry(self, retry: Retry) -> None:
        await self.broadcast(frames.retrying_frame(self.reply_id, retry.attempt, retry.delay, retry.reason))

    async def _finish(self, stream: ChatStream, status: str, finish_reason: str, error) -> None:
        duration = time.monotonic() - self.started
        metrics.REPLY_DURATION.labels(status).observe(duration)
        fields = dict(
            status=status,
            finish_reason=finish_reason,
            content="".join(self.content),
            reasoning="".join(self.reasoning),
            refusal="".join(self.refusal),
            seq=self.seq,
            usage=stream.usage,
            ttft_ms=self.ttft_ms,
            duration_ms=duration * 1000,
            error_code=error[0] if error else "",
            error_detail=error[1] if error else "",
            target=self.turn.target,
        )
        if stream.response_model:
            fields["model"] = stream.response_model
        try:
            # Counted here, not by finish_many on the database thread every socket shares.
            target = self.turn.target
            fields["token_count"] = await tokens.count_soon(
                len(fields["content"]), tokens.count_tokens, fields["content"], target.model, target.encoding
            )
            saved = await self.worker.finishes((self.reply_id, fields))
            early.reply_saved(self.worker, self.turn, saved["content"], saved.get("token_count"))
        except Exception:
            # Leave it streaming: the lease runs out and recovery marks it interrupted
            # with the last checkpoint, rather than losing the reply silently here.
            log.exception("Could not save reply %s", self.reply_id)
            saved = fields
        finally:
            self.worker.ended(self)
        finals = frames.end_frames(
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
        await self.watchers.send_end(self.conversation_id, self.reply_id, finals)
        if self.remote is not None:
            await self.remote.close(finals)
        titles.start(self.worker, self.turn, status, fields["content"])  # after `done`: never delays it

    def stop(self) -> None:
        self.stop_requested = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

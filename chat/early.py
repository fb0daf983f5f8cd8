"""The provider request of a send, begun while the turn is saved (issue #15).

A send used to be saved first and only then sent to the provider, so every millisecond of
database work (more on PostgreSQL, more again with a hundred sends at once) was added to
the wait the provider imposes anyway. Now, once a send is known to be allowed, its request
goes out at once, built from what this process last read of the conversation (`Known`),
and the turn is saved meanwhile (chat.writers.TurnWriter). The request is kept only if
the saved turn asks exactly the same (prompt and target, compared in
chat.worker.Worker.start); otherwise, or if the save is refused or fails, it is abandoned
and the turn goes the old way.

Why nothing is lost or shown early: the reply's text is read from the response only by
chat.generation, which exists only once the turn's transaction has committed; until
then the provider's bytes wait in the connection. Token counts are the transaction's, as
before; a request is only kept when it sent what they count.

What is checked before the request, without the database: a reply running or a turn
queued in this process for the conversation (commands._begin), the user's replies this
process runs against CHAT_MAX_REPLIES_PER_USER, no budgets known to this process, and a
conversation this process knows (one deleted or changed here is forgotten at once). What
only the database knows (replies of the user on other worker processes, a change made
through another process) is caught by the save: the request is then abandoned before
anything of it is read.
"""

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from chat import budgets, replies
from chat.models import Conversation
from chat.providers import Target
from chat.upstream import ChatStream

if TYPE_CHECKING:  # chat.worker imports this module
    from chat import worker


@dataclass
class Known:
    """A conversation as this process last read or wrote it: enough to build the prompt of
    its next send without reading the database."""

    conversation: Conversation
    target: Target
    rows: list


class EarlyRequest:
    def __init__(self, prompt: list[dict], target: Target) -> None:
        self.prompt = prompt
        self.target = target
        self.started = time.monotonic()  # the reply's time to first token counts from here
        self.stream = ChatStream(
            target.provider,
            target.model,
            prompt,
            include_usage=target.include_usage,
            stream=target.stream,
            api_style=target.api_style,
        )
        self.adopted = False
        self.stream.begin()

    def adopt(self, turn: replies.Turn) -> ChatStream | None:
        """The request, for the reply of `turn`, if it asked exactly what the turn asks;
        else None, and the request is abandoned."""
        if not self.adopted and self.prompt == turn.prompt and self.target == turn.target:
            self.adopted = True
            return self.stream
        self.cancel()
        return None

    def cancel(self) -> None:
        """Not wanted (the send was refused or failed, or the guess was wrong); a no-op once
        a reply has the request."""
        if not self.adopted:
            self.stream.abandon()


def begin(here: "worker.Worker", conversation_id: int, content: str, counted) -> EarlyRequest | None:
    """The send's request, sent now, if this process can tell the send will be allowed and
    what it will ask; else None (the turn is saved first, then the request made)."""
    known = here.known.get(conversation_id)
    if known is None or not budgets.none_known():
        return None
    if any(row[6] for row in known.rows):
        # Earlier files go with every prompt, read from the database and storage as it is
        # built (chat.replies._prompt): such a branch is not known well enough to guess from.
        return None
    cap = settings.CHAT_MAX_REPLIES_PER_USER
    if cap and _replies_of(here, known.conversation.user_id) + 1 > cap:
        return None
    try:
        prompt = replies.next_prompt(known.conversation, known.target, known.rows, content, counted)
    except replies.Uncounted:  # counted for another model or system prompt than known's
        return None
    return EarlyRequest(prompt, known.target)


def _replies_of(here: "worker.Worker", user_id: int) -> int:
    running = sum(
        1 for g in here.running.values() if getattr(g.turn.conversation, "user_id", None) == user_id
    )
    queued = sum(1 for t in here.turns.queued.values() if t.conversation.user_id == user_id)
    return running + queued


def remember(here: "worker.Worker", found: tuple | None) -> None:
    """What replies.branch read for a socket that opened: (conversation, target, rows)."""
    if found is None:
        return
    conversation, target, rows = found
    if conversation.pk not in here.running:
        here.known[conversation.pk] = Known(conversation, target, rows)


def reply_saved(here: "worker.Worker", turn: replies.Turn, content: str, token_count: int | None) -> None:
    """A reply's end was saved: the branch now ends with it (if it has text; an empty reply
    is not part of a prompt)."""
    if turn.conversation is None or turn.rows is None:
        return
    if turn.conversation_id not in here.watchers.sockets:
        return  # no socket left to send from; the next one to open reads it again
    if turn.user_message and turn.user_message.get("attachments"):
        return  # its row here counts no files (chat.replies._append): read it again instead
    rows = list(turn.rows)
    if content:
        rows.append(replies.reply_row(rows, turn.target, content, token_count))
    here.known[turn.conversation_id] = Known(turn.conversation, turn.target, rows)


def forget(here: "worker.Worker", conversation_id: int) -> None:
    here.known.pop(conversation_id, None)


def forget_everywhere(sender, instance, **kwargs) -> None:
    """A conversation saved or deleted (settings dialog, rename, delete; any thread): the
    next send there reads it from the database first."""
    from chat.worker import workers  # chat.worker imports this module's users

    for each in workers():
        try:
            each.loop.call_soon_threadsafe(forget, each, instance.pk)
        except RuntimeError:  # that loop is closed: its Worker is gone with it
            pass

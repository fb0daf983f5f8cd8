"""The database side of a reply: begin, checkpoint, finish, recover.

Plain synchronous functions, called from the async generation code through
`database_sync_to_async`. A reply costs four writes (the user message, the reply
placeholder that points to it (Message.parent, chat.versions), one bumping the
conversation, one finishing), plus one batched checkpoint a second while it
streams.
"""

import contextvars
import functools
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from chat import attachments, budgets, providers, tokens
from chat.cluster import single_process
from chat.models import Attachment, Conversation, Message
from chat.providers import Target

TITLE_LENGTH = 60


class Busy(Exception):
    """A reply is already streaming in this conversation."""


class NothingToRegenerate(Exception):
    """The conversation has no user message to answer again."""


class NotEditable(Exception):
    """The message to edit is not one of the user's messages on the branch shown."""


class TooManyReplies(Exception):
    """The user already has CHAT_MAX_REPLIES_PER_USER replies streaming (any conversation,
    any worker process): each one holds a connection to the provider."""


@dataclass(frozen=True)
class Counted:
    """Token counts of a send's texts, made before its database call and off the database
    thread (chat.generation counts them on the event loop or in a worker thread): that one
    thread is shared by every socket of the process, and encoding a long text there held
    up every other user's send. Valid for one model and encoding override (Target's)."""

    model: str
    encoding: str
    texts: dict[str, int | None]


class Uncounted(Exception):
    """A text this send needs counted was not in its Counted (the conversation's model or
    system prompt changed since the socket last counted): count these and begin again.
    Raised before anything is written."""

    def __init__(self, model: str, encoding: str, content: str | None, system: str) -> None:
        super().__init__("token counts are needed first")
        self.model, self.encoding, self.content, self.system = model, encoding, content, system


def count_ahead(model: str, encoding: str, content: str | None, system: str) -> Counted:
    """Count a send's content and system prompt for begin_* (the system prompt through the
    cache: it is the same text send after send)."""
    texts = {}
    if content is not None:
        texts[content] = tokens.count_tokens(content, model, encoding)
    if system:
        texts[system] = tokens.system_prompts.count(system, model, encoding)
    return Counted(model, encoding, texts)


def system_prompt(conversation: Conversation) -> str:
    """The system prompt a conversation is sent with: its own, else the site's default."""
    return conversation.system_prompt or settings.CHAT_SYSTEM_PROMPT


def _counts(target: Target, counted: Counted | None, content: str | None, system: str):
    """The token counts of the content and the system prompt, without encoding anything
    here unless `counted` is None (a caller on its own thread: tests, scripts). A count
    neither in `counted` nor in the system prompt cache raises Uncounted, unless the
    vocabulary is unavailable (then counts are None and cost nothing)."""
    model, encoding = target.model, target.encoding
    if counted is None:
        return (
            None if content is None else tokens.count_tokens(content, model, encoding),
            tokens.system_prompts.count(system, model, encoding) if system else None,
        )
    usable = counted.texts if (counted.model, counted.encoding) == (model, encoding) else {}
    content_tokens = system_tokens = None
    missing = False
    if content is not None:
        missing = content not in usable
        content_tokens = usable.get(content)
    if system:
        system_tokens = usable.get(system)
        if system_tokens is None:
            system_tokens = tokens.system_prompts.get(system, model, encoding)
            missing = missing or system_tokens is None
    if missing and tokens.get_encoding(tokens.encoding_name(model, encoding)) is not None:
        raise Uncounted(model, encoding, content, system)
    return content_tokens, system_tokens


@dataclass
class Turn:
    """Everything a generation needs, read in the transaction that created the reply."""

    conversation_id: int
    reply_id: int
    target: Target
    prompt: list[dict]
    prompt_tokens: int | None
    user_message: dict | None = None
    replaces: int | None = None
    trimmed: int = 0
    budget: dict | None = None
    replaces_user: int | None = None
    # What the user typed in the message answered (its files left out; the files' names when
    # nothing was typed), for its title (titled_by).
    user_text: str | None = None
    # The conversation as the transaction read it, and its branch up to the reply (untrimmed
    # history rows, the user message included): chat.early builds the next prompt from them.
    conversation: Conversation | None = None
    rows: list | None = None

    @property
    def model(self) -> str:
        return self.target.model


def lease_deadline():
    return timezone.now() + timedelta(seconds=settings.CHAT_LEASE_SECONDS)


# A history row: role, content, its token count, the running total it was written with
# (tokens and number of messages before it; see Message.tokens_before), its id and how many
# files are attached to it (the message being written: id None, its files at hand).
Row = tuple[str, str, int | None, int | None, int | None, int | None, int]


def _prompt(
    conversation: Conversation,
    history: list[Row],
    target: Target,
    tally: int | None,
    system_count: int | None,
    attached: list | None = None,
):
    """The messages sent upstream, their token count as the provider will bill it, and how
    many of the oldest were left out to fit the model's context window. `tally` is the
    history's tokens (_tally), which the caller has already for the reply's running total;
    `system_count` the system prompt's content tokens (_counts); `attached` the files of the
    message being written (chat.attachments)."""
    model, encoding = target.model, target.encoding
    system = system_prompt(conversation)
    counted = None if tally is None else tokens.REPLY_PRIMING + tally
    if system and counted is not None:
        system_tokens = tokens.count_messages(("system",), (system_count,), model, encoding)
        counted = None if system_tokens is None else counted + system_tokens
    with_files = [row[5] for row in history if row[6]]
    files = attachments.by_message(with_files) if with_files else {}
    if files and not target.reads_images:
        history, change = _images_left_out(history, files, target)
        counted = None if counted is None or change is None else counted + change
    trimmed = 0
    if target.context_window and counted is not None:
        room = max(1, target.context_window - target.max_reply_tokens)
        # Drop the oldest messages (never the system prompt or the newest message) until it fits.
        while counted > room and len(history) > 1:
            role, _, count, *_ = history.pop(0)
            counted -= count + tokens.message_overhead(role, model, encoding_override=encoding)
            trimmed += 1
    prompt = _messages(history, target, files, attached)
    if system:
        prompt.insert(0, {"role": "system", "content": system})
    return prompt, counted, trimmed


def _images_left_out(history: list[Row], files: dict, target: Target) -> tuple[list[Row], int | None]:
    """For a model that reads no images: each earlier message with an image is sent with a
    note in the image's place (attachments.message_content), so it is counted again as that
    text, not as it was stored (its text and its images' tokens). The history with those
    counts, and by how much its total changed (None: one could not be counted). Rare (a chat
    whose model was changed), so encoding here, on the database thread, is acceptable."""
    rows, change = [], 0
    for row in history:
        role, content, count, before, position, message_id, file_count = row
        mine = files.get(message_id, []) if file_count else []
        if any(a.kind == Attachment.Kind.IMAGE for a in mine):
            text = attachments.message_text(content, mine, images=False)
            recounted = tokens.count_tokens(text, target.model, target.encoding)
            if change is not None:
                change = None if count is None or recounted is None else change + recounted - count
            row = (role, content, recounted, before, position, message_id, file_count)
        rows.append(row)
    return rows, change


def _messages(history: list[Row], target: Target, files: dict, attached: list | None) -> list[dict]:
    """The history as chat messages: a message with files gets their text (and images, for a
    model that reads them) with it. `files`: earlier messages' files, by message id."""
    messages = []
    for role, content, _, _, _, message_id, file_count in history:
        mine = attached if message_id is None else files.get(message_id) if file_count else None
        if mine:
            content = attachments.message_content(content, mine, images=target.reads_images)
        messages.append({"role": role, "content": content})
    return messages


def _tally(history: list[Row], target: Target) -> int | None:
    """Tokens of these messages, framing included, from the last one's running total when
    it can be trusted: it was written over as many messages as are before it now (rows
    from before the running total existed, or a message deleted from the middle, fail
    that). Otherwise the stored counts are summed. No text is encoded again either way.
    """
    if not history:
        return 0
    role, _, count, before, position, *_ = history[-1]
    if before is not None and count is not None and position == len(history) - 1:
        overhead = tokens.message_overhead(role, target.model, encoding_override=target.encoding)
        return None if overhead is None else before + count + overhead
    roles, _, counts, *_ = zip(*history, strict=True)
    return tokens.count_messages(roles, counts, target.model, target.encoding)


def _total(history: list[Row], target: Target) -> dict:
    """The running total of a message that follows `history`, as its row's fields."""
    return {"tokens_before": _tally(history, target), "messages_before": len(history)}


def _append(history: list[Row], role: str, content: str, count: int | None, target: Target) -> dict:
    """Add a message being written to the end of `history`; its running total, as its row's fields."""
    total = _total(history, target)
    history.append((role, content, count, total["tokens_before"], total["messages_before"], None, 0))
    return total


def _history(conversation_id: int, up_to_id: int | None = None) -> list[Row]:
    """The conversation as it stands, oldest first: no earlier versions, no reply still
    streaming, no empty reply."""
    params = [conversation_id, False, Message.Status.STREAMING, Message.Role.ASSISTANT, ""]
    sql = _sql("history")
    if up_to_id is not None:
        sql, params = _sql("history_up_to"), [*params, up_to_id]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _current(conversation_id: int) -> tuple[int | None, list[Row]]:
    """_last_current and _history in one query: the branch's last message (the parent of one
    added now), and its history as _history reads it. One round trip less per send."""
    with connection.cursor() as cursor:
        cursor.execute(_sql("current"), [conversation_id, False])
        found = cursor.fetchall()
    if not found:
        return None, []
    streaming, assistant = Message.Status.STREAMING, Message.Role.ASSISTANT
    history = [
        (role, content, *totals)
        for _, status, role, content, *totals in found
        if status != streaming and not (role == assistant and content == "")
    ]
    return found[-1][0], history


def _last_current(conversation_id: int, below: int | None = None) -> int | None:
    """The id of the last message on the conversation's current branch (before id `below`):
    the parent of a message added there."""
    sql, params = _sql("last_current"), [conversation_id, False, below if below is not None else 2**63 - 1]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


def _claim(conversation: Conversation, live_ids, write):
    """Run `write` (which creates a streaming reply) in a transaction; Busy if one streams,
    TooManyReplies if the user has CHAT_MAX_REPLIES_PER_USER streaming already.

    The partial unique index makes "one streaming reply per conversation" hold across
    processes. Only when it trips do we look for a reply left streaming by a dead
    process, mark it interrupted and try once more: the common path costs no query.
    """
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                _check_reply_cap(conversation.user_id)
                written = write()
            counts = _streaming_counts.get()
            if counts is not None and conversation.user_id in counts:
                counts[conversation.user_id] += 1
            return written
        except IntegrityError:
            if attempt == 2 or not recover_stale(conversation.id, live_ids):
                raise Busy from None


def _check_reply_cap(user_id: int) -> None:
    """Refuse a reply beyond CHAT_MAX_REPLIES_PER_USER streaming ones (0: no cap).

    Counted in the database, in the transaction that creates the reply, so it holds across
    worker processes: on SQLite that transaction holds the write lock from its start
    (IMMEDIATE), on PostgreSQL begin_many has locked the user's row. One indexed query
    (message_lease: streaming replies whose lease runs; a dead process's stop counting
    when their lease lapses, rather than blocking the user until someone recovers them).
    """
    cap = settings.CHAT_MAX_REPLIES_PER_USER
    if not cap:
        return
    counts = _streaming_counts.get()
    streaming = None if counts is None else counts.get(user_id)
    if streaming is None:
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(_sql("streaming_of_user"), [Message.Status.STREAMING, now, user_id])
            (streaming,) = cursor.fetchone()
        if counts is not None:
            counts[user_id] = streaming
    if streaming >= cap:
        raise TooManyReplies


# A batch's count of each user's streaming replies (begin_many): read once per user, then
# the replies the batch begins are added (_claim). Sound because the batch holds the user's
# lock until it commits (SQLite's write lock, PostgreSQL's row lock: _lock_users), so no
# other process adds one meanwhile. The count walks every reply streaming on the site, and
# a hundred sends of one user at once read it a hundred times (docs/benchmark.md).
_streaming_counts: contextvars.ContextVar[dict[int, int] | None] = contextvars.ContextVar(
    "streaming_counts", default=None
)


# A batch's conversations as _fresh reads them, read in one query at the batch's start
# (begin_many): conversation id -> its row, or None if it was deleted. Each is taken out
# when used, so a second call for the conversation reads it again.
_read_ahead: contextvars.ContextVar[dict[int, tuple | None] | None] = contextvars.ContextVar(
    "read_ahead", default=None
)


def _read_conversations(ids: set[int]) -> dict[int, tuple | None]:
    """_fresh's rows of several conversations in one query (None: deleted)."""
    read: dict[int, tuple | None] = dict.fromkeys(ids)
    sql = _sql("conversations").format(", ".join(["%s"] * len(ids)))
    with connection.cursor() as cursor:
        cursor.execute(sql, list(ids))
        for row in cursor.fetchall():
            read[row[0]] = row
    return read


def lock_conversation(conversation_id: int) -> None:
    """Where transactions do not take the write lock at their start (PostgreSQL), lock the
    conversation's row, so a regeneration and a version switch (chat.versions) in two
    processes do not each read the branch the other is changing."""
    if connection.vendor == "sqlite" or not connection.features.has_select_for_update:
        return
    list(Conversation.objects.filter(pk=conversation_id).select_for_update().values_list("pk", flat=True))


def _lock_users(user_ids) -> None:
    """Where transactions do not take the write lock at their start (PostgreSQL), lock the
    users' rows, in id order so two batches cannot deadlock: two workers' sends of one user
    then count each other's replies (_check_reply_cap) instead of both passing."""
    if not settings.CHAT_MAX_REPLIES_PER_USER or connection.vendor == "sqlite":
        return
    if not connection.features.has_select_for_update:
        return
    ids = sorted(set(user_ids))
    # A statement built once, not a queryset: compiling the ORM's SELECT ... FOR UPDATE
    # was a large part of a lone send's Python work on the database thread.
    with connection.cursor() as cursor:
        cursor.execute(_sql("lock_users").format(", ".join(["%s"] * len(ids))), ids)


def _fresh(conversation: Conversation) -> Conversation:
    """The socket loaded the conversation when it opened; the model or system prompt may
    have been changed since (settings dialog, another tab)."""
    read = _read_ahead.get()
    if read is not None and conversation.pk in read:
        row = read.pop(conversation.pk)
    else:
        with connection.cursor() as cursor:
            cursor.execute(_sql("conversation"), [conversation.pk])
            row = cursor.fetchone()
    if row is None:
        raise Conversation.DoesNotExist(f"Conversation {conversation.pk} was deleted.")
    return Conversation(id=row[0], user_id=row[1], model=row[2], system_prompt=row[3])


def _placeholder(
    conversation: Conversation, target: Target, prompt_tokens: int | None, now, total: dict, parent: int
) -> dict:
    """The streaming reply's row, for _insert; `total` is its running total (_total), `parent`
    the user message it answers."""
    return {
        **total,
        "parent_id": parent,
        "conversation_id": conversation.id,
        "role": Message.Role.ASSISTANT,
        "status": Message.Status.STREAMING,
        "model": target.model,
        "prompt_tokens": prompt_tokens,
        "lease_until": lease_deadline(),
        "created_at": now,
    }


def begin_turn(
    conversation: Conversation,
    content: str,
    live_ids=(),
    *,
    edit: bool = False,
    edit_id: int | None = None,
    counted: Counted | None = None,
    attached: list[Attachment] | None = None,
) -> Turn:
    """Save the user's message and a streaming reply placeholder, atomically.

    With `edit`, user message `edit_id` (or the last one) and everything after it on the
    current branch first become another version (kept, never deleted): the new message is
    a sibling of it (chat.versions). Raises Busy if a reply streams, TooManyReplies if the
    user has too many streaming, BudgetExceeded if the user may not send now, Uncounted
    if `counted` lacks a count, NotEditable if `edit_id` is not a user message on the
    current branch; in each case nothing is written and no model is called.

    `attached`: files sent with the message (chat.attachments.pending), tied to it in the same
    transaction; for an edit also files of the edited message that its new version keeps
    (chat.attachments.for_edit), which get rows of their own (carry). ImagesNotSupported if
    one is an image and the model reads none, UnknownAttachment if one was sent meanwhile (or
    a kept one is not the edited message's). Their text is counted as part of the
    message (`counted` has the message's whole text), their images by the model's formula.
    """
    attached = attached or []
    conversation = _fresh(conversation)
    budget = budgets.check(conversation.user_id)
    target = providers.resolve(conversation)
    if not target.reads_images and any(a.kind == Attachment.Kind.IMAGE for a in attached):
        raise attachments.ImagesNotSupported(target.label)
    text = attachments.message_text(content, attached) if attached else content
    content_tokens, system_count = _counts(target, counted, text, system_prompt(conversation))
    if attached:
        content_tokens = attachments.count_message(content_tokens, attached, target)
    now = timezone.now()
    # Files already sent with the message an edit replaces (kept; the rest are uploads), told
    # apart before `write`, which may run twice (_claim) and ties uploads to the message.
    kept_ids = {a.pk for a in attached if a.message_id is not None}

    def write():
        # First, so that on PostgreSQL this turn holds the conversation's row lock before it
        # reads the branch: a version switch (chat.versions.switch) waits for it, or it for one.
        with connection.cursor() as cursor:
            updated_at = Conversation._meta.get_field("updated_at").get_db_prep_save(now, connection)
            title = _title(titled_by(content, attached))
            cursor.execute(_sql("touch_conversation"), [updated_at, title, conversation.id])
        replaced = None
        if edit:
            current = Message.objects.current().filter(conversation_id=conversation.id)
            users = current.filter(role=Message.Role.USER)
            edited = users.filter(pk=edit_id) if edit_id is not None else users.order_by("-id")
            replaced = edited.values_list("id", flat=True).first()
            if replaced is None:
                raise NotEditable if edit_id is not None else NothingToRegenerate
            # The current branch is in id order (a child is written after its parent), so
            # the edited message's parent is the last current message before it.
            parent = _last_current(conversation.id, replaced)
            current.filter(id__gte=replaced).update(superseded=True)
            history = _history(conversation.id)
        else:
            parent, history = _current(conversation.id)
        user = {
            **_append(history, Message.Role.USER, content, content_tokens, target),
            "parent_id": parent,
            "conversation_id": conversation.id,
            "role": Message.Role.USER,
            "content": content,
            "token_count": content_tokens,
            "attachment_count": len(attached),
            "created_at": now,
        }
        rows = list(history)
        reply_total = _total(history, target)  # before _prompt trims the history
        prompt, prompt_tokens, trimmed = _prompt(
            conversation, history, target, reply_total["tokens_before"], system_count, attached
        )
        # An edit's kept files are the edited message's rows (attachments.for_edit): if
        # another message is edited now (a send from another tab since), none is kept.
        kept = [a for a in attached if a.pk in kept_ids]
        if any(a.message_id != replaced for a in kept):
            raise attachments.UnknownAttachment
        reply = _placeholder(conversation, target, prompt_tokens, now, reply_total, parent=None)
        user_id, reply_id = _insert_turn(user, reply)
        carried = attached
        if attached:
            added = [a for a in attached if a.pk not in kept_ids]
            if added:
                attachments.attach(added, user_id, conversation.user_id)
            copies = iter(attachments.carry(kept, user_id) if kept else ())
            carried = [next(copies) if a.pk in kept_ids else a for a in attached]
        return prompt, prompt_tokens, trimmed, user_id, reply_id, replaced, carried, rows

    prompt, prompt_tokens, trimmed, user_id, reply_id, replaced, carried, rows = _claim(
        conversation, live_ids, write
    )
    return Turn(
        conversation_id=conversation.id,
        reply_id=reply_id,
        target=target,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        user_message={
            "id": user_id,
            "content": content,
            "attachments": [attachments.payload(a) for a in carried],
        },
        user_text=titled_by(content, attached),
        trimmed=trimmed,
        budget=budget,
        replaces_user=replaced,
        conversation=conversation,
        rows=rows,
    )


def begin_edit(
    conversation: Conversation,
    content: str,
    live_ids=(),
    *,
    message_id: int | None = None,
    counted: Counted | None = None,
    attached: list[Attachment] | None = None,
) -> Turn:
    """User message `message_id` (default: the last), edited and sent again (see begin_turn)."""
    return begin_turn(
        conversation, content, live_ids, edit=True, edit_id=message_id, counted=counted, attached=attached
    )


def begin_regenerate(conversation: Conversation, live_ids=(), *, counted: Counted | None = None) -> Turn:
    """A new reply to the last user message; earlier replies to it become earlier versions."""
    conversation = _fresh(conversation)
    budget = budgets.check(conversation.user_id)
    target = providers.resolve(conversation)
    _, system_count = _counts(target, counted, None, system_prompt(conversation))

    def write():
        lock_conversation(conversation.id)
        last_user = (
            Message.objects.current()
            .filter(conversation_id=conversation.id, role=Message.Role.USER)
            .order_by("-id")
            .first()
        )
        if last_user is None:
            raise NothingToRegenerate
        previous = list(
            Message.objects.current()
            .filter(conversation_id=conversation.id, role=Message.Role.ASSISTANT, id__gt=last_user.id)
            .values_list("id", flat=True)
        )
        Message.objects.filter(id__in=previous).update(superseded=True)
        history = _history(conversation.id, last_user.id)
        rows = list(history)
        reply_total = _total(history, target)  # before _prompt trims the history
        prompt, prompt_tokens, trimmed = _prompt(
            conversation, history, target, reply_total["tokens_before"], system_count
        )
        reply = _placeholder(
            conversation, target, prompt_tokens, timezone.now(), reply_total, parent=last_user.id
        )
        (reply_id,) = _insert(Message, [reply])
        files = attachments.by_message([last_user.id]).get(last_user.id, []) if not last_user.content else []
        return prompt, prompt_tokens, trimmed, previous, reply_id, titled_by(last_user.content, files), rows

    prompt, prompt_tokens, trimmed, previous, reply_id, user_text, rows = _claim(
        conversation, live_ids, write
    )
    return Turn(
        conversation_id=conversation.id,
        reply_id=reply_id,
        target=target,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        replaces=previous[-1] if previous else None,
        trimmed=trimmed,
        budget=budget,
        user_text=user_text,
        conversation=conversation,
        rows=rows,
    )


def next_prompt(
    conversation: Conversation, target: Target, rows: list[Row], content: str, counted: Counted
) -> list[dict]:
    """The prompt begin_turn would send for `content` if the conversation's branch were
    `rows` (what this process last read of it; chat.early checks the guess against what
    begin_turn reads). Reads nothing; Uncounted if `counted` lacks a count."""
    content_tokens, system_count = _counts(target, counted, content, system_prompt(conversation))
    history = list(rows)
    _append(history, Message.Role.USER, content, content_tokens, target)
    tally = _total(history, target)["tokens_before"]
    return _prompt(conversation, history, target, tally, system_count)[0]


def reply_row(rows: list[Row], target: Target, content: str, token_count: int | None) -> Row:
    """The history row a finished reply after `rows` reads back as (its running total is
    the one _placeholder wrote)."""
    total = _total(rows, target)
    return (
        Message.Role.ASSISTANT,
        content,
        token_count,
        total["tokens_before"],
        total["messages_before"],
        None,
        0,
    )


def branch(
    conversation: Conversation, live_ids=(), read: bool = True
) -> tuple[list[int], int | None, tuple | None]:
    """A socket opened on the conversation: replies there left streaming by a dead process,
    marked interrupted (recover_stale); the reply another process streams there now, if
    any; and, with `read` and if none streams, the conversation, its target and its branch
    as a send would read them now (None if it was deleted, or a reply streams: its end would
    change the branch unseen)."""
    recovered = recover_stale(conversation.pk, live_ids)
    streaming = None
    if not single_process():  # else recover_stale left none (this process's own: chat.watching)
        streaming = (
            Message.objects.filter(conversation_id=conversation.pk, status=Message.Status.STREAMING)
            .values_list("id", flat=True)
            .first()
        )
    if streaming is not None or not read:
        return recovered, streaming, None
    budgets.learn()
    try:
        fresh = _fresh(conversation)
    except Conversation.DoesNotExist:
        return recovered, None, None
    return recovered, None, (fresh, providers.resolve(fresh), _history(fresh.id))


def begin_many(calls: list[tuple], live_ids) -> list[tuple[bool, object]]:
    """Several begin_* calls, `(begin, conversation, *args)`, in one transaction: sends that
    arrive together cost one trip to the database thread and one commit, not one each.

    A refused or failed send undoes only its own writes: a begin_* call writes only inside
    _claim's savepoint, and what it does before (reading the conversation, checking the
    budget) writes nothing, so no savepoint of its own is needed (each cost PostgreSQL two
    round trips). Returns (True, Turn) or (False, exception) per call, in order. A reply
    begun earlier in the batch counts as live for the later calls (it is not a dead one to
    recover).
    """
    live = list(live_ids)
    results = []
    counting = _streaming_counts.set({})
    reading = _read_ahead.set(None)
    try:
        with transaction.atomic():
            _lock_users(conversation.user_id for _, conversation, *_ in calls)
            if len(calls) > 1:  # one query for the batch's conversations, not one each
                _read_ahead.set(_read_conversations({conversation.pk for _, conversation, *_ in calls}))
            for begin, *args in calls:
                try:
                    turn = begin(*args, live)
                except Exception as exc:
                    results.append((False, exc))
                else:
                    live.append(turn.reply_id)
                    results.append((True, turn))
    finally:
        _read_ahead.reset(reading)
        _streaming_counts.reset(counting)
    return results


def checkpoint(states: list[dict], lease_ids: list[int]) -> list[tuple[int, Exception]]:
    """Persist streaming replies' text so far and renew every lease this process holds;
    returns the replies whose text could not be saved, each with why.

    The texts go in one executemany that renews their leases too (one write per reply a
    second), rather than an ORM update per reply: with hundreds of streams the ORM's Python
    work held the GIL long enough to delay the relay's deltas every second. Replies with
    no new text only have their leases renewed, in a statement of their own. If the batch
    of texts fails, each is written alone, and a reply whose text cannot be stored still
    has its lease renewed: one bad row must not lose another reply's checkpoint, nor let
    any reply's lease lapse (with several processes, that reply would be marked
    interrupted while it streams; issue #12).
    """
    lease_until = lease_deadline()
    if lease_ids:
        _renew(lease_ids, lease_until)
    if not states:
        return []
    try:
        with transaction.atomic():
            _write_states(states, lease_until)
        return []
    except Exception as exc:
        failed = [(states[0]["id"], exc)] if len(states) == 1 else []
    if not failed:
        for state in states:
            try:
                with transaction.atomic():
                    _write_states([state], lease_until)
            except Exception as exc:
                failed.append((state["id"], exc))
    if failed:
        _renew([reply_id for reply_id, _ in failed], lease_until)
    return failed


def _renew(reply_ids: list[int], lease_until) -> None:
    Message.objects.filter(pk__in=reply_ids, status=Message.Status.STREAMING).update(lease_until=lease_until)


def _write_states(states: list[dict], lease_until) -> None:
    until = connection.ops.adapt_datetimefield_value(lease_until)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {Message._meta.db_table} SET content = %s, reasoning = %s, refusal = %s, "
            "seq = %s, lease_until = %s WHERE id = %s AND status = %s",
            [
                (s["content"], s["reasoning"], s["refusal"], s["seq"], until, s["id"], "streaming")
                for s in states
            ],
        )


def finish_many(finishes: list[tuple[int, dict]]) -> list[dict | Exception]:
    """Write replies' final states: (reply id, fields) each; returns, in order, what each
    `done` frame reports, or the exception that kept that reply from being saved.

    One transaction and one executemany for replies that end together (a burst of short
    answers; the end of a benchmark round): through the ORM, building the queries for
    hundreds of replies ending at once held the GIL while every other stream's deltas
    waited (measured in docs/benchmark.md). If
    the batch fails, each reply is written alone, so one bad row cannot lose the others.
    """
    rows = []
    for reply_id, fields in finishes:
        target = fields.pop("target")
        if "token_count" not in fields:  # else counted by the caller, off the database thread
            fields["token_count"] = tokens.count_tokens(fields["content"], target.model, target.encoding)
        fields["completion_tokens"] = fields["token_count"]
        fields["lease_until"] = None
        rows.append((reply_id, fields))
    try:
        with transaction.atomic():
            _write_finals(rows)
        return [fields for _, fields in rows]
    except Exception:
        if len(rows) == 1:
            raise
    results = []
    for row in rows:
        try:
            with transaction.atomic():
                _write_finals([row])
        except Exception as exc:
            results.append(exc)
        else:
            results.append(row[1])
    return results


def _write_finals(rows: list[tuple[int, dict]]) -> None:
    sql, fields = _finish_sql(connection.vendor)
    params = [
        [field.get_db_prep_save(values[field.name], connection) for field in fields]
        + [values.get("model", ""), reply_id]
        for reply_id, values in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


_FINAL_FIELDS = (
    "status",
    "finish_reason",
    "content",
    "reasoning",
    "refusal",
    "seq",
    "usage",
    "ttft_ms",
    "duration_ms",
    "error_code",
    "error_detail",
    "completion_tokens",
    "token_count",
    "lease_until",
)


@functools.cache
def _finish_sql(vendor: str) -> tuple[str, list]:
    """The final UPDATE; `model` (what the provider said it ran) only where one was reported."""
    quote = connection.ops.quote_name
    fields = [Message._meta.get_field(name) for name in _FINAL_FIELDS]
    model = quote(Message._meta.get_field("model").column)
    sets = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    sql = (
        f"UPDATE {quote(Message._meta.db_table)} SET {sets}, {model} = COALESCE(NULLIF(%s, ''), {model}) "
        f"WHERE {quote(Message._meta.pk.column)} = %s"
    )
    return sql, fields


INTERRUPTED_DETAIL = "The server stopped while this reply was streaming; the text saved before that is kept."


def recover_stale(conversation_id: int | None = None, live_ids=()) -> list[int]:
    """Mark replies whose generation died (crash, kill, deploy) as interrupted; their ids.

    With several worker processes a reply is dead when its lease ran out (the
    owner renews it every checkpoint). With the in-memory channel layer there is
    only one process, so any streaming reply it is not running is dead now.
    """
    stale = Message.objects.filter(status=Message.Status.STREAMING)
    if conversation_id is not None:
        stale = stale.filter(conversation_id=conversation_id)
    if single_process():
        stale = stale.exclude(pk__in=list(live_ids))
    else:
        stale = stale.filter(lease_until__lt=timezone.now())
    marked = []
    for message in stale.only("id", "content", "model"):
        counted = tokens.count_tokens(message.content, message.model or settings.CHAT_MODEL)
        changed = Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(
            status=Message.Status.INTERRUPTED,
            finish_reason="interrupted",
            error_code="interrupted",
            error_detail=INTERRUPTED_DETAIL,
            completion_tokens=counted,
            token_count=counted,
            lease_until=None,
        )
        if changed:  # not if another process marked it first
            marked.append(message.pk)
    return marked


# -- the send path, in SQL built once ----------------------------------------------------
# A send stands between the user and the first token. Through the ORM, most of its time went
# to building queries, not to running them (measured in docs/benchmark.md); these statements
# are built once from the models' metadata and read and write what those ORM calls did.


@functools.cache
def _statements(vendor: str) -> dict[str, str]:
    quote = connection.ops.quote_name

    def column(model, name: str) -> str:
        return quote(model._meta.get_field(name).column)

    message, conversation = quote(Message._meta.db_table), quote(Conversation._meta.db_table)
    m = functools.partial(column, Message)
    history = (
        f"SELECT {m('role')}, {m('content')}, {m('token_count')}, {m('tokens_before')}, {m('messages_before')}, "
        f"{m('id')}, {m('attachment_count')} "
        f"FROM {message} "
        f"WHERE {m('conversation')} = %s AND {m('superseded')} = %s AND {m('status')} <> %s "
        f"AND NOT ({m('role')} = %s AND {m('content')} = %s)"
    )
    c = functools.partial(column, Conversation)
    user, u_id = quote(get_user_model()._meta.db_table), quote(get_user_model()._meta.pk.column)
    return {
        "conversation": (
            f"SELECT {c('id')}, {c('user')}, {c('model')}, {c('system_prompt')} FROM {conversation} "
            f"WHERE {c('id')} = %s"
        ),
        "lock_users": (  # str.format's {} takes the placeholders, one per id
            f"SELECT {u_id} FROM {user} WHERE {u_id} IN ({{}}) ORDER BY {u_id} FOR UPDATE"
        ),
        "conversations": (  # str.format's {} takes the placeholders, one per id
            f"SELECT {c('id')}, {c('user')}, {c('model')}, {c('system_prompt')} FROM {conversation} "
            f"WHERE {c('id')} IN ({{}})"
        ),
        "history": f"{history} ORDER BY {m('id')}",
        # The replies streaming now, site-wide, through the message_lease index (status,
        # lease_until), each one's owner looked up by primary key. Written as a correlated
        # subquery so no planner can start from the user's conversations instead: with a
        # join, PostgreSQL did (stale statistics) and walked all of them on every send.
        "streaming_of_user": (
            f"SELECT COUNT(*) FROM {message} WHERE {m('status')} = %s AND {m('lease_until')} > %s "
            f"AND (SELECT {c('user')} FROM {conversation} WHERE {conversation}.{c('id')} = "
            f"{message}.{m('conversation')}) = %s"
        ),
        "history_up_to": f"{history} AND {m('id')} <= %s ORDER BY {m('id')}",
        "current": (
            f"SELECT {m('id')}, {m('status')}, {m('role')}, {m('content')}, {m('token_count')}, "
            f"{m('tokens_before')}, {m('messages_before')}, {m('id')}, {m('attachment_count')} FROM {message} "
            f"WHERE {m('conversation')} = %s AND {m('superseded')} = %s ORDER BY {m('id')}"
        ),
        "last_current": (
            f"SELECT {m('id')} FROM {message} WHERE {m('conversation')} = %s AND {m('superseded')} = %s "
            f"AND {m('id')} < %s ORDER BY {m('id')} DESC LIMIT 1"
        ),
        "touch_conversation": (
            f"UPDATE {conversation} SET {c('updated_at')} = %s, "
            f"{c('title')} = CASE WHEN {c('title')} = '' THEN %s ELSE {c('title')} END WHERE {c('id')} = %s"
        ),
    }


def _sql(name: str) -> str:
    return _statements(connection.vendor)[name]


@functools.cache
def _insert_sql(vendor: str, model, rows: int) -> tuple[str, list]:
    quote = connection.ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES {', '.join([row] * rows)} RETURNING {quote(model._meta.pk.column)}"
    )
    return sql, fields


@functools.cache
def _columns(vendor: str, model) -> tuple[list, dict, list]:
    """For inserting rows: each field's default as the database takes it (None where one is
    made per row, e.g. a timestamp), each attname's (position, how a value is made ready
    for the database), and the positions of the per-row defaults; worked out once."""
    _, fields = _insert_sql(vendor, model, 1)
    defaults, positions, per_row = [], {}, []
    for index, field in enumerate(fields):
        if field.has_default() and callable(field.default):
            defaults.append(None)
            per_row.append((index, field))
        else:
            defaults.append(field.get_db_prep_save(field.get_default(), connection))
        kind = field.get_internal_type()
        if kind == "DateTimeField":
            ready = connection.ops.adapt_datetimefield_value
        elif kind == "JSONField":
            ready = functools.partial(field.get_db_prep_save, connection=connection)
        else:  # text, numbers, booleans, foreign keys: what get_db_prep_save gives for plain values
            ready = _plain_or(functools.partial(field.get_db_prep_save, connection=connection))
        positions[field.attname] = (index, ready)
    return defaults, positions, per_row


def _plain_or(prepare):
    def ready(value):
        return value if value is None or type(value) in (str, int, float, bool) else prepare(value)

    return ready


def _insert(model, rows: list[dict]) -> list[int]:
    """Insert rows given as {attname: value} (other fields take their defaults) in one
    statement, built once per model and row count; returns the new ids in row order
    (SQLite and PostgreSQL both return them, and assign them in that order)."""
    sql, _ = _insert_sql(connection.vendor, model, len(rows))
    with connection.cursor() as cursor:
        cursor.execute(sql, _insert_params(model, rows))
        return sorted(row[0] for row in cursor.fetchall())  # rows come back in no promised order


@functools.cache
def _turn_sql(vendor: str) -> str:
    """The user's message and its reply in one statement, the reply's parent taken from the
    message's RETURNING (a data-modifying WITH: PostgreSQL's, not SQLite's). The reply is
    selected FROM the message's row, so its id is drawn after the message's: a child comes
    after its parent in id order, which the branch reads rely on."""
    sql, fields = _insert_sql(vendor, Message, 1)
    head = sql.split(" VALUES ", 1)[0]
    parent = [f.attname for f in fields].index("parent_id")
    pk = connection.ops.quote_name(Message._meta.pk.column)
    values = ["%s"] * len(fields)
    values[parent] = f"asked.{pk}"
    return (
        f"WITH asked AS ({sql}) {head} SELECT {', '.join(values)} FROM asked "
        f"RETURNING {pk}, {connection.ops.quote_name(fields[parent].column)}"
    )


def _insert_turn(user: dict, reply: dict) -> tuple[int, int]:
    """Insert the user's message and the reply that answers it (`reply`'s parent_id is set
    to the message's new id); their ids. On PostgreSQL in one statement: a round trip
    less for every send."""
    if connection.vendor != "postgresql":
        (user_id,) = _insert(Message, [user])
        (reply_id,) = _insert(Message, [{**reply, "parent_id": user_id}])
        return user_id, reply_id
    _, fields = _insert_sql(connection.vendor, Message, 1)
    parent = [f.attname for f in fields].index("parent_id")
    reply_params = _insert_params(Message, [reply])
    del reply_params[parent]
    with connection.cursor() as cursor:
        cursor.execute(_turn_sql(connection.vendor), [*_insert_params(Message, [user]), *reply_params])
        reply_id, user_id = cursor.fetchone()
    return user_id, reply_id


def _insert_params(model, rows: list[dict]) -> list:
    """The parameters of _insert_sql for rows given as {attname: value}. Values are made
    ready as get_db_prep_save would, without its chain of calls for every field of every
    row, which was a third of a send's Python work."""
    defaults, positions, per_row = _columns(connection.vendor, model)
    params = []
    for row in rows:
        values = defaults.copy()
        for index, field in per_row:
            if field.attname not in row:
                values[index] = field.get_db_prep_save(field.get_default(), connection)
        for attname, value in row.items():
            index, ready = positions[attname]
            values[index] = ready(value)
        params += values
    return params


def titled_by(content: str, attached) -> str:
    """What a chat's first words (and the model's title, chat.titles) are drawn from: what was
    typed, or for a message of files alone their names, so that such a chat is titled too."""
    return content or ", ".join(a.name for a in attached)


def _title(content: str) -> str:
    title = " ".join(content.split())
    return title if len(title) <= TITLE_LENGTH else title[: TITLE_LENGTH - 1].rstrip() + "…"

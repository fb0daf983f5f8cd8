"""Versions of messages (issue #14): a conversation's messages form a tree, and the page
shows one branch of it, with `‹ 2/3 ›` under a message that has other versions.

Message.parent is the message before one on its branch; the children of one parent are
versions of each other (an edited user message and the one it replaced, a reply and its
regenerations). The first user messages of a conversation have no parent: they are
versions of each other too. Message.superseded stays the materialised "not on the current
branch" flag, so every reader of `.current()` (prompts, budgets, exports, the admin) sees
the branch that is shown, and a message's running total (tokens_before) stays true: it
counts its ancestors, which never change.

Switching to a version makes the current branch that version's ancestors, the version
itself, and below it the most recent child at each step. Plain synchronous functions,
called through `database_sync_to_async`.
"""

from collections import defaultdict
from dataclasses import dataclass

from django.db import transaction

from chat.models import Message
from chat.replies import Busy, lock_conversation, recover_stale


class NotAVersion(Exception):
    """The message is not in the conversation, or has no place in its tree (an earlier
    version saved before the tree existed, whose parent is not known)."""


@dataclass(frozen=True)
class Versions:
    """Where a message stands among its versions: `index` of `count`, 1-based, and the ids
    of the versions before and after it (None at either end)."""

    index: int
    count: int
    previous: int | None
    next: int | None

    def as_dict(self) -> dict:
        return {"index": self.index, "count": self.count, "previous": self.previous, "next": self.next}


# (id, parent id, role, messages_before) of every message of a conversation.
_FIELDS = ("id", "parent_id", "role", "messages_before")


def _rows(conversation_id: int) -> list[tuple]:
    return list(Message.objects.filter(conversation_id=conversation_id).order_by("id").values_list(*_FIELDS))


def _group(parent_id: int | None, role: str, messages_before: int | None):
    """Which versions a message is one of: its parent's children, or for a first message
    (no parent, nothing before it) the conversation's first messages. A message without a
    parent that was not first (an old earlier version) is in no group."""
    if parent_id is not None:
        return parent_id
    if role == Message.Role.USER and messages_before == 0:
        return "first"
    return None


def of(conversation_id: int, message_ids) -> dict[int, Versions]:
    """For each of `message_ids` that has other versions, where it stands among them.
    One query over the conversation's messages (ids and parents only)."""
    groups: dict[object, list[int]] = defaultdict(list)
    group_of = {}
    for message_id, parent_id, role, messages_before in _rows(conversation_id):
        group = _group(parent_id, role, messages_before)
        if group is not None:
            groups[group].append(message_id)  # in id order: oldest version first
            group_of[message_id] = group
    found = {}
    for message_id in message_ids:
        siblings = groups.get(group_of.get(message_id), [])
        if len(siblings) < 2:
            continue
        at = siblings.index(message_id)
        found[message_id] = Versions(
            index=at + 1,
            count=len(siblings),
            previous=siblings[at - 1] if at > 0 else None,
            next=siblings[at + 1] if at + 1 < len(siblings) else None,
        )
    return found


def branch(rows: list[tuple], message_id: int) -> list[int]:
    """The branch through `message_id`: its ancestors, itself, then the most recent child
    at each step. NotAVersion if its ancestors do not reach a first message."""
    parents = {row[0]: row[1] for row in rows}
    first = {row[0] for row in rows if _group(row[1], row[2], row[3]) == "first"}
    if message_id not in parents:
        raise NotAVersion
    path = []
    node = message_id
    while node is not None:
        path.append(node)
        node = parents.get(node)
    if path[-1] not in first:
        raise NotAVersion
    path.reverse()
    children = defaultdict(list)
    for child, parent in parents.items():
        if parent is not None:
            children[parent].append(child)
    node = message_id
    while children[node]:
        node = max(children[node])
        path.append(node)
    return path


def switch(conversation_id: int, message_id: int, live_ids=()) -> list[int]:
    """Show version `message_id`: the branch through it becomes the current one, in one
    transaction. Busy while a reply streams in the conversation (it answers the branch
    shown when it began); NotAVersion for a message not in the conversation's tree.
    Returns the new branch's ids, oldest first."""
    with transaction.atomic():
        lock_conversation(conversation_id)  # a turn begun meanwhile waits, or this waits for it
        streaming = Message.objects.filter(conversation_id=conversation_id, status=Message.Status.STREAMING)
        if streaming.exists():
            recover_stale(conversation_id, live_ids)  # one left by a dead process does not count
            if streaming.exists():
                raise Busy
        path = branch(_rows(conversation_id), message_id)
        messages = Message.objects.filter(conversation_id=conversation_id)
        messages.filter(superseded=False).exclude(pk__in=path).update(superseded=True)
        messages.filter(pk__in=path, superseded=True).update(superseded=False)
        return path

"""Files attached to a message (issue #16): limits, storage, and how they go to the model.

What is in a file (its type, its text, its image made safe) is read by chat/file_contents.py
first; then the upload is checked against the limits and stored, and its row written, so a
refusal leaves nothing behind. Files are kept in STORAGES["chat_attachments"], never a public
path. The HTTP side (upload, remove before sending, download) is chat/attachment_views.py.
"""

from __future__ import annotations

import base64
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from chat import tokens
from chat.file_contents import Read, Refused, read, size_text
from chat.models import Attachment
from chat.text import storable

log = logging.getLogger(__name__)

UNSENT_LIFETIME = timedelta(days=1)


class UnknownAttachment(Exception):
    """An id in a send that is not one of the sender's files waiting to be sent."""


class ImagesNotSupported(Exception):
    """An image sent to a model not marked in the admin as reading images."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


def check_limits(user, size: int) -> None:
    """The upload's size, the user's unsent files and their total stored, before reading it."""
    check_size(size)
    check_count(user)
    check_quota(user, size)


def check_size(size: int) -> None:
    limit = settings.CHAT_ATTACHMENT_MAX_BYTES
    if size > limit:
        raise Refused(
            "file_too_large", f"That file is {size_text(size)}; the limit is {size_text(limit)}.", 413
        )


def check_count(user) -> None:
    unsent = Attachment.objects.unsent().filter(owner=user).count()
    if unsent >= settings.CHAT_ATTACHMENTS_PER_MESSAGE:
        raise Refused(
            "too_many_files",
            f"A message can carry {settings.CHAT_ATTACHMENTS_PER_MESSAGE} files; remove one to attach another.",
        )


def check_quota(user, size: int) -> None:
    quota = settings.CHAT_ATTACHMENT_QUOTA_BYTES
    if not quota:
        return
    # A file kept by an edit has a row per version (carry): counted once.
    files = Attachment.objects.filter(owner=user).values("file").annotate(bytes=Max("size"))
    used = files.aggregate(total=Sum("bytes"))["total"] or 0
    if used + size > quota:
        raise Refused(
            "quota_exceeded",
            f"Your files take {size_text(used)} of your {size_text(quota)}; this one does not fit. "
            "Delete conversations with files you no longer need.",
            413,
        )


def clean_name(name: str) -> str:
    """An uploaded file's name as kept and shown: no path, no control characters (it goes in
    a header and between the model's file delimiters), at most 255 characters."""
    name = "".join(
        "_" if char in "/\\" or ord(char) < 32 or ord(char) == 127 else char for char in storable(name)
    )
    return name.strip()[:255] or "file"


def target_for(model: str):
    """The model an upload is counted for: the chat's model name, or blank for the site's default."""
    from chat import providers
    from chat.models import Conversation

    return providers.resolve(Conversation(model=model))


def store(user, name: str, data: bytes, model: str = "") -> Attachment:
    """Read, check and store one upload, in one call (tests, scripts; the upload view runs the
    same steps each on its own thread). Refused before anything is stored."""
    name = clean_name(name)
    check_limits(user, len(data))
    found = read(name, data)
    target = target_for(model)
    text_tokens = None if found.kind == Attachment.Kind.IMAGE else count_text(name, found.text, target)
    return save(user, name, found, target, text_tokens)


def count_text(name: str, text: str, target) -> int | None:
    """A text file's or PDF's tokens as the model reads it, delimited (file_block)."""
    return tokens.count_tokens(file_block(name, text), target.model, target.encoding)


def save(user, name: str, found: Read, target, text_tokens: int | None) -> Attachment:
    """Store a file read and counted (its text's tokens counted by the caller, off the database
    thread); its row. The count and quota are checked again under a lock."""
    attachment = Attachment(
        owner=user,
        name=name,
        size=len(found.data),
        content_type=found.content_type,
        kind=found.kind,
        text=found.text,
        width=found.width,
        height=found.height,
        note=found.note,
    )
    if found.kind == Attachment.Kind.IMAGE:
        count(attachment, target.model)
    else:
        attachment.token_count, attachment.counted_for = text_tokens, target.model
    with transaction.atomic():
        # Checked again under a lock (SQLite: the write lock this transaction takes at its
        # start; PostgreSQL: the user's row), so two uploads at once cannot both pass the
        # quota. The slow part, reading the file, was done before.
        _lock_user(user)
        check_count(user)
        check_quota(user, len(found.data))  # a re-encoded image can be larger than the upload
        attachment.file.save(f"{user.pk}/{uuid.uuid4().hex}", ContentFile(found.data), save=False)
        try:
            attachment.save()
        except BaseException:
            attachment.file.storage.delete(attachment.file.name)
            raise
    return attachment


def _lock_user(user) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection

    if connection.vendor != "sqlite" and connection.features.has_select_for_update:
        list(get_user_model().objects.filter(pk=user.pk).select_for_update().values_list("pk", flat=True))


# -- what the model is sent ----------------------------------------------------------------
def file_block(name: str, text: str) -> str:
    """A file's text as the model reads it: delimited, with its name."""
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'<file name="{quoted}">\n{text}\n</file>'


def left_out(name: str) -> str:
    """What a model that reads no images is told in place of an earlier message's image."""
    return f"[image {name} left out: this model does not read images]"


def message_text(content: str, attached: list[Attachment], images: bool = True) -> str:
    """A user message's text part: what was typed, then each text file and PDF's text; without
    `images`, a note in place of each image (left_out), so the model knows one was there."""
    blocks = [file_block(a.name, a.text) for a in attached if a.kind != Attachment.Kind.IMAGE]
    if not images:
        blocks += [left_out(a.name) for a in attached if a.kind == Attachment.Kind.IMAGE]
    return "\n\n".join(part for part in [content, *blocks] if part)


IMAGE_REFERENCE = "attachment:"  # an image part's url until chat.generation reads its bytes


def message_content(content: str, attached: list[Attachment], images: bool = True) -> str | list[dict]:
    """A user message's `content` for the chat completions API: a string when there is no
    image; else text and image parts, each image a reference resolved to a data URL just
    before the request (inline_images), so its bytes are never held in a Turn for long.

    Without `images` (the conversation's model was changed since to one that reads none),
    each image is left out, a short note in its place: a send with an image to such a model is
    refused (begin_turn), but the files of earlier messages must not stop the conversation
    from going on. Such a message is counted as sent (chat.replies._images_left_out)."""
    text = message_text(content, attached, images)
    images = [a for a in attached if a.kind == Attachment.Kind.IMAGE] if images else []
    if not images:
        return text
    parts = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": f"{IMAGE_REFERENCE}{a.pk}"}} for a in images]
    return parts


def has_images(prompt: list[dict]) -> bool:
    return any(isinstance(m.get("content"), list) for m in prompt)


def _data_urls(prompt: list[dict]) -> list[dict]:
    ids = [
        int(part["image_url"]["url"][len(IMAGE_REFERENCE) :])
        for message in prompt
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url" and part["image_url"]["url"].startswith(IMAGE_REFERENCE)
    ]
    urls = {}
    for attachment in Attachment.objects.filter(pk__in=ids).only("id", "file", "content_type"):
        with attachment.file.open("rb") as handle:
            encoded = base64.b64encode(handle.read()).decode("ascii")
        urls[f"{IMAGE_REFERENCE}{attachment.pk}"] = f"data:{attachment.content_type};base64,{encoded}"
    result = []
    for message in prompt:
        if isinstance(message.get("content"), list):
            parts = []
            for part in message["content"]:
                if part.get("type") == "image_url" and part["image_url"]["url"] in urls:
                    part = {"type": "image_url", "image_url": {"url": urls[part["image_url"]["url"]]}}
                parts.append(part)
            message = {**message, "content": parts}
        result.append(message)
    return result


async def inline_images(prompt: list[dict]) -> list[dict]:
    """The prompt with each image reference replaced by its data URL, read from storage in a
    thread (not on the event loop, nor on the database thread every socket shares)."""
    from asgiref.sync import sync_to_async

    if not has_images(prompt):
        return prompt
    return await sync_to_async(_data_urls, thread_sensitive=False)(prompt)


# -- sending ---------------------------------------------------------------------------------
def pending(user_id: int, ids) -> list[Attachment]:
    """The sender's files with these ids, not sent yet, in the order given; UnknownAttachment
    if one is not (another user's, already sent, removed)."""
    ids = list(ids)
    found = {a.pk: a for a in Attachment.objects.unsent().filter(owner_id=user_id, pk__in=ids)}
    if len(found) != len(set(ids)):
        raise UnknownAttachment
    return [found[pk] for pk in ids]


def for_edit(user_id: int, conversation_id: int, message_id: int | None, ids) -> list[Attachment]:
    """The files an edit's new version carries: with `ids` None, all of the edited message's
    (user message `message_id` on the branch shown, or the last one); else those ids, each one
    of the edited message's (kept) or one of the sender's uploads not sent yet (added).
    UnknownAttachment for any other id. Kept files are still the edited message's rows here:
    begin_turn gives the new version rows of its own (carry), after the uploads' ids, so the
    added come first here too: the prompt lists them as every later one will (by id)."""
    from chat.models import Message

    users = Message.objects.current().filter(conversation_id=conversation_id, role=Message.Role.USER)
    edited = users.filter(pk=message_id) if message_id is not None else users.order_by("-id")
    edited_id = edited.values_list("id", flat=True).first()
    own = {a.pk: a for a in Attachment.objects.filter(message_id=edited_id)} if edited_id else {}
    if ids is None:
        return list(own.values())
    uploads = [pk for pk in ids if pk not in own]
    added = {a.pk: a for a in pending(user_id, uploads)} if uploads else {}
    return [added[pk] for pk in uploads] + [own[pk] for pk in ids if pk in own]


def carry(kept: list[Attachment], message_id: int) -> list[Attachment]:
    """New rows for an edited message's files that its new version keeps, in the transaction
    that writes it. They name the same stored file as the earlier version's rows: an edit
    copies no bytes and takes nothing of the quota (check_quota counts a file once), and the
    file is deleted only with the last row naming it (delete_files)."""
    fields = ("owner_id", "name", "file", "size", "content_type", "kind", "text", "width", "height", "note")
    rows = [
        Attachment(
            **{field: getattr(a, field) for field in fields},
            message_id=message_id,
            token_count=a.token_count,
            counted_for=a.counted_for,
        )
        for a in kept
    ]
    return Attachment.objects.bulk_create(rows)


def attach(attached: list[Attachment], message_id: int, owner_id: int) -> None:
    """Tie the files to the user message just written, in its transaction; UnknownAttachment
    (rolling the turn back) if one was sent or removed since `pending` read it."""
    ids = [a.pk for a in attached]
    taken = Attachment.objects.unsent().filter(owner_id=owner_id, pk__in=ids).update(message_id=message_id)
    if taken != len(ids):
        raise UnknownAttachment
    for attachment in attached:
        attachment.message_id = message_id
    Attachment.objects.bulk_update(attached, ["token_count", "counted_for"])


def by_message(message_ids) -> dict[int, list[Attachment]]:
    """Files of these messages, by message id, oldest first (one query)."""
    found: dict[int, list[Attachment]] = {}
    fields = ("id", "message_id", "name", "kind", "text", "content_type", "width", "height")
    for attachment in (
        Attachment.objects.filter(message_id__in=list(message_ids)).only(*fields).order_by("id")
    ):
        found.setdefault(attachment.message_id, []).append(attachment)
    return found


def count_message(text_tokens: int | None, attached: list[Attachment], target) -> int | None:
    """A user message's tokens: its text with its files' text (counted by the caller), plus
    its images by the model's formula; each file's own count recorded on it for `target`.
    None when any part cannot be counted."""
    total = text_tokens
    for attachment in attached:
        if attachment.counted_for != target.model:
            count(attachment, target.model, target.encoding)
        if attachment.kind == Attachment.Kind.IMAGE and target.reads_images:
            total = (
                None if total is None or attachment.token_count is None else total + attachment.token_count
            )
    return total


# -- counting ------------------------------------------------------------------------------
def count(attachment: Attachment, model: str, encoding: str = "") -> int | None:
    """This file's tokens in a prompt to `model`: its delimited text with tiktoken, an image by
    the model's published formula (chat.image_tokens); kept on the row (not saved here)."""
    if attachment.kind == Attachment.Kind.IMAGE:
        from chat.image_tokens import count_image

        counted = count_image(model, attachment.width, attachment.height)
    else:
        counted = tokens.count_tokens(file_block(attachment.name, attachment.text), model, encoding)
    attachment.token_count, attachment.counted_for = counted, model
    return counted


def uncounted(attachment: Attachment) -> str | None:
    """Why this file's tokens are not counted (its `tokens` is null), in words for the chip's
    tooltip, as a reply's "tokens not counted" has: the operator's fix. None when counted."""
    if attachment.token_count is not None:
        return None
    if attachment.kind == Attachment.Kind.IMAGE:
        return (
            f"No image token rule matches {attachment.counted_for or 'this model'}: staff can add "
            "one in the admin (Image token rules)."
        )
    return tokens.HOW_TO_COUNT


def payload(attachment: Attachment) -> dict:
    """An attachment as every message description shows it (docs/protocol.md)."""
    return {
        "id": attachment.pk,
        "name": attachment.name,
        "size": attachment.size,
        "kind": attachment.kind,
        "content_type": attachment.content_type,
        "url": attachment.download_path(),
        "tokens": attachment.token_count,
    }


def of_messages(message_ids) -> dict[int, list[dict]]:
    """The attachments of these messages, described, by message id (one query)."""
    found: dict[int, list[dict]] = {}
    for attachment in Attachment.objects.filter(message_id__in=list(message_ids)).order_by("id"):
        found.setdefault(attachment.message_id, []).append(payload(attachment))
    return found


# -- removal -------------------------------------------------------------------------------
def delete_files(names: list[str]) -> None:
    """Delete stored files once the rows that named them are gone for good (after the commit:
    a rolled-back delete must not lose the file its row still names), each only if no row
    names it any more (an edit's versions share their files: carry)."""
    from chat.models import attachment_storage

    def remove():
        storage = attachment_storage()
        named = set(Attachment.objects.filter(file__in=names).values_list("file", flat=True))
        for name in names:
            if name in named:
                continue
            try:
                storage.delete(name)
            except Exception:
                log.exception("Could not delete the stored file %s", name)

    transaction.on_commit(remove)


def purge_unsent(now=None) -> int:
    """Remove uploads never sent with a message that are older than a day; how many."""
    cutoff = (now or timezone.now()) - UNSENT_LIFETIME
    old = Attachment.objects.unsent().filter(created_at__lt=cutoff)
    count = old.count()
    old.delete()  # the post_delete handler (chat.apps) deletes each file
    return count


def delete_stored_file(sender, instance: Attachment, **kwargs) -> None:
    """post_delete of an Attachment (connected in chat.apps)."""
    if instance.file.name:
        delete_files([instance.file.name])

"""Files attached to a message (issue #16): what is accepted, what is read from it, how it is
stored, and how it goes to the model.

A file's type is sniffed from its bytes, never taken from the browser or the name; a name
that says otherwise (an HTML page named .png) is refused as `content_mismatch`. Everything
is read and checked in memory first, then stored, then its row written, so a refusal
leaves nothing behind. Images are decoded whole (a truncated one is refused), turned
upright, downscaled to fit CHAT_IMAGE_MAX_SIDE and re-encoded, which drops their metadata
(a photo's location). SVG is not accepted: it can carry script. Text must be UTF-8, or
UTF-16 with a byte-order mark; other encodings are refused rather than guessed at.

The HTTP side (upload, remove before sending, download) is chat/attachment_views.py.
"""

from __future__ import annotations

import base64
import io
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from chat import tokens
from chat.models import Attachment
from chat.text import storable

log = logging.getLogger(__name__)

IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
IMAGE_EXTENSIONS = {"png", "jpg", "jpeg", "jpe", "gif", "webp"}
# What a text file is served and described as, by its name; anything else is text/plain,
# never text/html: the bytes are the user's, and a browser must not run them.
TEXT_TYPES = {
    "csv": "text/csv",
    "md": "text/markdown",
    "markdown": "text/markdown",
    "tsv": "text/tab-separated-values",
}
REFUSED_EXTENSIONS = {
    "svg": "SVG images are not accepted: they can carry script. Attach a PNG or JPEG instead."
}
# Control characters other than tab, newline, form feed and carriage return: more than a
# few mean the file is binary, whatever its name.
BINARY_CONTROLS = set(range(0x00, 0x09)) | {0x0B} | set(range(0x0E, 0x20)) | {0x7F}
UNSENT_LIFETIME = timedelta(days=1)


class UnknownAttachment(Exception):
    """An id in a send that is not one of the sender's files waiting to be sent."""


class ImagesNotSupported(Exception):
    """An image sent to a model not marked in the admin as reading images."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class Refused(Exception):
    """An upload that is not accepted; nothing of it was stored."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code, self.detail, self.status = code, detail, status


@dataclass
class Read:
    """What was read from an upload, before anything is stored."""

    kind: str
    content_type: str
    data: bytes  # the bytes to store: as uploaded, or the image re-encoded
    text: str = ""
    width: int | None = None
    height: int | None = None
    note: str = ""


def _extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _size_text(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return ""  # not reached


def read(name: str, data: bytes) -> Read:
    """Check an upload and read it: its kind, its type sniffed from the bytes, its text or
    its image (downscaled, metadata dropped). Refused if it breaks a rule."""
    extension = _extension(name)
    if extension in REFUSED_EXTENSIONS:
        raise Refused("unsupported_type", REFUSED_EXTENSIONS[extension])
    if not data:
        raise Refused("bad_file", f"{name} is empty.")
    if data.startswith(b"%PDF-"):
        found = "pdf"
    elif data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")) or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    ):
        found = "image"
    else:
        found = "text"
    expected = "image" if extension in IMAGE_EXTENSIONS else "pdf" if extension == "pdf" else None
    if expected and expected != found:
        said = "an image" if expected == "image" else "a PDF"
        raise Refused(
            "content_mismatch", f"{name} is named as {said}, but its content is not one; nothing was stored."
        )
    if found == "pdf":
        return _read_pdf(name, data)
    if found == "image":
        return _read_image(name, data)
    return _read_text(name, data, extension)


def _read_text(name: str, data: bytes, extension: str) -> Read:
    note = ""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise Refused("bad_file", f"{name} starts as UTF-16 text but is not valid UTF-16.") from None
        note, charset = "read as UTF-16", "utf-16"
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Refused(
                "bad_file",
                f"{name} is not UTF-8 text (nor UTF-16 with a byte-order mark), or not text at all. "
                "Save it as UTF-8 and attach it again.",
            ) from None
        charset = "utf-8"
    controls = sum(1 for char in text[:65536] if ord(char) in BINARY_CONTROLS)
    if controls > 8:
        raise Refused(
            "unsupported_type",
            f"{name} is not a text file, a PDF or an image (PNG, JPEG, WebP, GIF) and cannot be attached.",
        )
    text = storable(text)
    _check_chars(name, len(text))
    content_type = f"{TEXT_TYPES.get(extension, 'text/plain')}; charset={charset}"
    return Read("text", content_type, data, text=text, note=note)


def _check_chars(name: str, chars: int) -> None:
    limit = settings.CHAT_ATTACHMENT_MAX_CHARS
    if chars > limit:
        raise Refused(
            "too_much_text",
            f"{name} has more than {limit:,} characters of text; attach a shorter part of it.",
        )


def _read_pdf(name: str, data: bytes) -> Read:
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise Refused(
                "bad_file",
                f"{name} is encrypted (password-protected): save an unprotected copy and attach that.",
            )
        pages = len(reader.pages)
        limit = settings.CHAT_PDF_MAX_PAGES
        if pages > limit:
            raise Refused("too_many_pages", f"{name} has {pages:,} pages; at most {limit:,} are read.")
        texts, empty, chars = [], [], 0
        for number, page in enumerate(reader.pages, 1):
            text = storable(page.extract_text() or "").strip()
            chars += len(text)
            _check_chars(name, chars)
            if text:
                texts.append(text)
            else:
                empty.append(number)
    except Refused:
        raise
    except LimitReachedError:
        # A stream that inflates past pypdf's bound: a zip bomb, or a PDF too big to read.
        raise Refused(
            "bad_file", f"{name} holds more data than a PDF should expand to; it was not read."
        ) from None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError, AssertionError):
        log.info("PDF %r could not be read", name, exc_info=True)
        raise Refused("bad_file", f"{name} could not be read as a PDF (damaged?).") from None
    if not texts:
        raise Refused(
            "bad_file",
            f"{name} has no text layer (a scan or pictures only), so the model would get nothing from it.",
        )
    note = ""
    if empty:
        listed = ", ".join(str(n) for n in empty[:10]) + (", …" if len(empty) > 10 else "")
        note = f"PDF page{'s' if len(empty) > 1 else ''} {listed} {'have' if len(empty) > 1 else 'has'} no text layer"
    return Read("pdf", "application/pdf", data, text="\n\n".join(texts), note=note)


def _read_image(name: str, data: bytes) -> Read:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        kind = image.format
        if kind not in IMAGE_TYPES:
            raise Refused("unsupported_type", f"{name} is not a PNG, JPEG, WebP or GIF image.")
        # Pillow's own bound against decompression bombs, checked on the header before decoding.
        if image.width * image.height > Image.MAX_IMAGE_PIXELS:
            raise Refused("bad_file", f"{name} has too many pixels to open safely.")
        frames = getattr(image, "n_frames", 1)
        image.load()  # decodes it whole: a truncated file fails here, not when it is sent
        image = ImageOps.exif_transpose(image)
    except Refused:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise Refused(
            "bad_file", f"{name} is damaged or cut short and could not be read as an image."
        ) from None
    notes = []
    if frames > 1:
        notes.append("animated: only its first frame is sent")
    side = settings.CHAT_IMAGE_MAX_SIDE
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        notes.append(f"downscaled to {image.width}×{image.height}")
    if kind == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out = io.BytesIO()
    # Saved afresh, without the original's metadata (EXIF, location, comments).
    options = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}, "PNG": {"optimize": False}}.get(kind, {})
    image.save(out, format=kind, **options)
    return Read(
        "image",
        IMAGE_TYPES[kind],
        out.getvalue(),
        width=image.width,
        height=image.height,
        note="; ".join(notes),
    )


def check_limits(user, size: int) -> None:
    """The upload's size, the user's unsent files and their total stored, before reading it."""
    limit = settings.CHAT_ATTACHMENT_MAX_BYTES
    if size > limit:
        raise Refused(
            "file_too_large", f"That file is {_size_text(size)}; the limit is {_size_text(limit)}.", 413
        )
    unsent = Attachment.objects.unsent().filter(owner=user).count()
    if unsent >= settings.CHAT_ATTACHMENTS_PER_MESSAGE:
        raise Refused(
            "too_many_files",
            f"A message can carry {settings.CHAT_ATTACHMENTS_PER_MESSAGE} files; remove one to attach another.",
        )
    check_quota(user, size)


def check_quota(user, size: int) -> None:
    quota = settings.CHAT_ATTACHMENT_QUOTA_BYTES
    if not quota:
        return
    used = Attachment.objects.filter(owner=user).aggregate(total=Sum("size"))["total"] or 0
    if used + size > quota:
        raise Refused(
            "quota_exceeded",
            f"Your files take {_size_text(used)} of your {_size_text(quota)}; this one does not fit. "
            "Delete conversations with files you no longer need.",
            413,
        )


def store(user, name: str, data: bytes, model: str = "") -> Attachment:
    """Read, check and store one upload; its row, its tokens counted for `model` (a chat's
    model name; blank: the site's default). Refused before anything is stored."""
    from chat import providers
    from chat.models import Conversation

    target = providers.resolve(Conversation(model=model))
    name = storable(name).replace("/", "_").replace("\\", "_").strip()[:255] or "file"
    check_limits(user, len(data))
    found = read(name, data)
    check_quota(user, len(found.data))  # a re-encoded image can be larger than the upload
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
    count(attachment, target.model, target.encoding)
    attachment.file.save(f"{user.pk}/{uuid.uuid4().hex}", ContentFile(found.data), save=False)
    try:
        attachment.save()
    except BaseException:
        attachment.file.storage.delete(attachment.file.name)
        raise
    return attachment


# -- what the model is sent ----------------------------------------------------------------
def file_block(name: str, text: str) -> str:
    """A file's text as the model reads it: delimited, with its name."""
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'<file name="{quoted}">\n{text}\n</file>'


def message_text(content: str, attached: list[Attachment]) -> str:
    """A user message's text part: what was typed, then each text file and PDF's text."""
    blocks = [file_block(a.name, a.text) for a in attached if a.kind != Attachment.Kind.IMAGE]
    return "\n\n".join(part for part in [content, *blocks] if part)


IMAGE_REFERENCE = "attachment:"  # an image part's url until chat.generation reads its bytes


def message_content(content: str, attached: list[Attachment], images: bool = True) -> str | list[dict]:
    """A user message's `content` for the chat completions API: a string when there is no
    image; else text and image parts, each image a reference resolved to a data URL just
    before the request (inline_images), so its bytes are never held in a Turn for long.

    Without `images` (the conversation's model was changed since to one that reads none),
    images are left out: a send with an image to such a model is refused (begin_turn), but
    the files of earlier messages must not stop the conversation from going on."""
    text = message_text(content, attached)
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
        if attachment.kind == Attachment.Kind.IMAGE and target.accepts_images:
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
    a rolled-back delete must not lose the file its row still names)."""
    from chat.models import attachment_storage

    def remove():
        storage = attachment_storage()
        for name in names:
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

"""What is in an uploaded file (issue #16): its type sniffed from its bytes, never taken from the
browser or the name, and what the model can be given of it: a text file's text, a PDF's text,
an image made safe to keep and send.

A name that says otherwise than the bytes (an HTML page named .png) is `content_mismatch`.
Images are decoded whole (a truncated one is refused), turned upright, downscaled to fit
CHAT_IMAGE_MAX_SIDE and re-encoded, which drops their metadata (a photo's location). SVG is
not accepted: it can carry script. Text must be UTF-8, or UTF-16 with a byte-order mark;
other encodings are refused rather than guessed at. Pillow and pypdf are imported on first
use, not when a worker starts. Storing, limits and sending are chat/attachments.py's.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from django.conf import settings

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


def size_text(size: int) -> str:
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

"""Files for the attachment tests, made here (Pillow, pypdf, by hand): no binaries are committed."""

import io
import zlib


def image(
    width: int = 64, height: int = 48, kind: str = "PNG", color=(200, 30, 30), exif: bytes | None = None
) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    picture = Image.new("RGB", (width, height), color)
    options = {"exif": exif} if exif else {}
    picture.save(out, format=kind, **options)
    return out.getvalue()


def exif_turned(description: str = "Rue de la Paix 1, Paris") -> bytes:
    """EXIF saying the picture is turned a quarter (orientation 6), with a description."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to show
    exif[0x010E] = description  # ImageDescription
    return exif.tobytes()


def _pdf(streams: list[bytes], filters: list[bool] | None = None) -> bytes:
    """A PDF with one page per content stream, Helvetica for its text."""
    filters = filters or [False] * len(streams)
    count = len(streams)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count))
        + b"] /Count %d >>" % count,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for index, stream in enumerate(streams):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (5 + 2 * index)
        )
        extra = b" /Filter /FlateDecode" if filters[index] else b""
        objects.append(b"<< /Length %d%s >>\nstream\n" % (len(stream), extra) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf(*pages: str) -> bytes:
    """A PDF whose pages say these texts (an empty string: a page with no text layer)."""
    streams = []
    for text in pages:
        if text:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
            streams.append(b"BT /F1 12 Tf 72 720 Td (" + escaped + b") Tj ET")
        else:
            streams.append(b"0 0 1 rg 72 72 100 100 re f")  # a square drawn, no text
    return _pdf(streams)


def zip_bomb_pdf(inflated: int = 120_000_000) -> bytes:
    """A PDF whose one content stream is a few hundred KB that inflate to `inflated` bytes."""
    compressor = zlib.compressobj(9)
    chunk = b" " * 1_000_000
    body = b"".join(compressor.compress(chunk) for _ in range(inflated // len(chunk))) + compressor.flush()
    return _pdf([body], [True])


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf("secret"))))
    writer.encrypt("password")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()

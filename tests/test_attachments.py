"""Attachments over HTTP (chat.attachments, chat.attachment_views): what is accepted, every
limit and bad input refused with its code and nothing stored, who may download, and files
removed with their rows."""

import datetime
import io
import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import attachments, tokens
from chat.models import Attachment, Conversation, Message, TranscriptAccess
from tests import files

pytestmark = pytest.mark.django_db

UPLOAD = "/attachments/"


@pytest.fixture(autouse=True)
def files_dir(stored) -> Path:
    return stored


def stored_files(location: Path) -> list[Path]:
    return [p for p in location.rglob("*") if p.is_file()] if location.exists() else []


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob", password="bob-password-1")


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def upload(
    client: Client, name: str, data: bytes, model: str = "", content_type: str = "application/octet-stream"
):
    return client.post(UPLOAD, {"file": SimpleUploadedFile(name, data, content_type), "model": model})


def refused(response, code: str, status: int = 400) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == code
    assert body["detail"]
    return body["detail"]


# -- accepted --------------------------------------------------------------------------------
def test_a_text_file_is_stored_and_counted_as_the_model_will_read_it(alice, stored):
    text = "name,amount\nalice,3\nbob,4\n"
    response = upload(
        client_for(alice), "sums.csv", text.encode(), model="gpt-4o-mini", content_type="text/html"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    attachment = Attachment.objects.get()
    counted = tokens.count_tokens(attachments.file_block("sums.csv", text), "gpt-4o-mini")
    assert body == {
        "id": attachment.pk,
        "name": "sums.csv",
        "size": len(text),
        "kind": "text",
        "content_type": "text/csv; charset=utf-8",  # from the bytes and the name, not the browser's text/html
        "tokens": counted,
        "note": None,
        # Why not counted, for the chip's tooltip: how the operator gets the vocabularies.
        "uncounted": None if counted is not None else tokens.HOW_TO_COUNT,
        "url": f"/attachments/{attachment.pk}/",
    }
    if tokens.get_encoding("o200k_base") is None:
        pytest.skip("tiktoken's vocabularies are not here: the count above was None")
    assert body["tokens"] > 0
    assert attachment.message is None and attachment.text == text and attachment.owner == alice
    (path,) = stored_files(stored)
    assert path.read_bytes() == text.encode()


def test_utf16_with_a_byte_order_mark_is_read_and_says_so(alice):
    response = upload(client_for(alice), "notes.txt", "naïve café".encode("utf-16"))
    assert response.status_code == 201
    assert response.json()["note"] == "read as UTF-16"
    assert Attachment.objects.get().text == "naïve café"


def test_a_pdf_gives_its_text_and_names_pages_without_text(alice):
    response = upload(client_for(alice), "report.pdf", files.pdf("Quarterly figures", "", "Outlook good"))
    assert response.status_code == 201
    body = response.json()
    assert (body["kind"], body["content_type"], body["note"]) == (
        "pdf",
        "application/pdf",
        "PDF page 2 has no text layer",
    )
    assert Attachment.objects.get().text == "Quarterly figures\n\nOutlook good"


def test_an_image_is_counted_by_the_models_formula(alice, gpt4o_images):
    response = upload(client_for(alice), "shot.png", files.image(1024, 1024), model="gpt-4o")
    assert response.status_code == 201
    body = response.json()
    assert (body["kind"], body["content_type"], body["tokens"]) == ("image", "image/png", 765)
    attachment = Attachment.objects.get()
    assert (attachment.width, attachment.height, attachment.counted_for) == (1024, 1024, "gpt-4o")


def test_an_image_too_large_in_pixels_is_downscaled_not_refused(alice, settings):
    settings.CHAT_IMAGE_MAX_SIDE = 1000
    response = upload(client_for(alice), "wide.png", files.image(3000, 1200))
    assert response.status_code == 201
    assert response.json()["note"] == "downscaled to 1000×400"
    attachment = Attachment.objects.get()
    assert (attachment.width, attachment.height) == (1000, 400)
    from PIL import Image

    with attachment.file.open("rb") as handle:
        assert Image.open(handle).size == (1000, 400)


def test_a_photo_is_turned_upright_and_its_metadata_dropped(alice):
    photo = files.image(64, 48, kind="JPEG", exif=files.exif_turned("Rue de la Paix 1, Paris"))
    assert b"Rue de la Paix" in photo
    assert upload(client_for(alice), "photo.jpg", photo).status_code == 201
    attachment = Attachment.objects.get()
    assert (attachment.width, attachment.height) == (48, 64)
    with attachment.file.open("rb") as handle:
        saved = handle.read()
    assert b"Rue de la Paix" not in saved and b"Exif" not in saved


# -- bad input: refused with a clear error, nothing stored -------------------------------------
BAD = {
    "an HTML page named .png": ("cat.png", b"<html><script>alert(1)</script></html>", "content_mismatch"),
    "a text file named .pdf": ("paper.pdf", b"just text", "content_mismatch"),
    "an SVG": (
        "logo.svg",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "unsupported_type",
    ),
    "a truncated image": ("cut.png", files.image(300, 200)[:150], "bad_file"),
    "a truncated JPEG": ("cut.jpg", files.image(300, 200, kind="JPEG")[:400], "bad_file"),
    "a zip-bomb PDF": ("bomb.pdf", files.zip_bomb_pdf(), "bad_file"),
    "an encrypted PDF": ("locked.pdf", files.encrypted_pdf(), "bad_file"),
    "a PDF without a text layer": ("scan.pdf", files.pdf("", ""), "bad_file"),
    "a damaged PDF": ("broken.pdf", b"%PDF-1.4\n1 0 obj <<", "bad_file"),
    "Latin-1 text": ("notes.txt", "café crème".encode("latin-1"), "bad_file"),
    "a binary file": ("data.bin", bytes(range(1, 32)) * 20, "unsupported_type"),
    "an empty file": ("empty.txt", b"", "bad_file"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_refused_and_nothing_is_stored(alice, stored, case):
    name, data, code = BAD[case]
    detail = refused(upload(client_for(alice), name, data), code)
    assert name in detail or "SVG" in detail
    assert not Attachment.objects.exists()
    assert stored_files(stored) == []


def test_the_detail_says_what_to_do_about_other_encodings(alice):
    detail = refused(upload(client_for(alice), "notes.txt", "café".encode("cp1252")), "bad_file")
    assert "UTF-8" in detail


# -- limits --------------------------------------------------------------------------------------
def test_a_file_over_the_byte_limit_is_refused(alice, settings, stored):
    settings.CHAT_ATTACHMENT_MAX_BYTES = 2048
    assert "2.0 KiB" in refused(upload(client_for(alice), "big.txt", b"a" * 2049), "file_too_large", 413)
    assert upload(client_for(alice), "fits.txt", b"a" * 2048).status_code == 201


def test_a_message_carries_at_most_so_many_files(alice, settings):
    settings.CHAT_ATTACHMENTS_PER_MESSAGE = 2
    client = client_for(alice)
    first = upload(client, "a.txt", b"a").json()
    upload(client, "b.txt", b"b")
    refused(upload(client, "c.txt", b"c"), "too_many_files")
    assert client.delete(first["url"]).status_code == 204
    assert upload(client, "c.txt", b"c").status_code == 201


def test_a_user_stores_at_most_the_quota(alice, bob, settings, stored):
    settings.CHAT_ATTACHMENT_QUOTA_BYTES = 3000
    client = client_for(alice)
    assert upload(client, "a.txt", b"a" * 2000).status_code == 201
    refused(upload(client, "b.txt", b"b" * 1001), "quota_exceeded", 413)
    assert upload(client_for(bob), "b.txt", b"b" * 1001).status_code == 201  # bob's own quota
    assert len(stored_files(stored)) == 2


def test_pdf_pages_and_extracted_characters_are_limited(alice, settings):
    settings.CHAT_PDF_MAX_PAGES = 2
    client = client_for(alice)
    assert "3 pages" in refused(
        upload(client, "long.pdf", files.pdf("one", "two", "three")), "too_many_pages"
    )
    settings.CHAT_ATTACHMENT_MAX_CHARS = 10
    refused(upload(client, "wordy.pdf", files.pdf("twelve chars")), "too_much_text")
    refused(upload(client, "wordy.txt", b"x" * 11), "too_much_text")
    assert upload(client, "short.txt", b"x" * 10).status_code == 201
    assert Attachment.objects.count() == 1


def test_a_name_loses_its_path_and_control_characters(alice):
    """A name comes from the browser: it goes in a header and between the model's delimiters."""
    attachment = attachments.store(alice, 'dir/x\r\nSet-Cookie: a="b".txt', b"text")
    assert attachment.name == 'dir_x__Set-Cookie: a="b".txt'
    assert (
        attachments.file_block(attachment.name, "t")
        == '<file name="dir_x__Set-Cookie: a=\\"b\\".txt">\nt\n</file>'
    )
    download = client_for(alice).get(attachment.download_path())
    assert download.status_code == 200 and "Set-Cookie" not in download.headers


def test_upload_needs_one_file_and_a_signed_in_user(alice):
    refused(client_for(alice).post(UPLOAD, {}), "bad_file")
    response = Client().post(UPLOAD, {"file": SimpleUploadedFile("a.txt", b"a")})
    assert response.status_code == 302 and not Attachment.objects.exists()


# -- download, remove ------------------------------------------------------------------------------
def sent(user: User, name: str, data: bytes) -> Attachment:
    """An attachment sent with a user message in a conversation of `user`."""
    attachment = attachments.store(user, name, data)
    conversation = Conversation.objects.create(user=user)
    attachment.message = Message.objects.create(conversation=conversation, role="user", content="see file")
    attachment.save()
    return attachment


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_the_owner_downloads_a_text_file_as_an_attachment_never_as_a_page(alice):
    attachment = sent(alice, "page.html", b"<script>alert(1)</script>")
    response = client_for(alice).get(attachment.download_path())
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="page.html"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert body(response) == b"<script>alert(1)</script>"


def test_an_image_downloads_inline_with_its_own_type(alice):
    attachment = sent(alice, "shot.png", files.image())
    response = client_for(alice).get(attachment.download_path())
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"].startswith("inline")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert body(response)[:8] == b"\x89PNG\r\n\x1a\n"


def test_another_user_gets_404_for_a_file_and_cannot_delete_it(alice, bob):
    attachment = attachments.store(alice, "a.txt", b"alice's")
    bobs = client_for(bob)
    assert bobs.get(attachment.download_path()).status_code == 404
    assert bobs.delete(attachment.download_path()).status_code == 404
    assert Attachment.objects.filter(pk=attachment.pk).exists()


def test_staff_with_view_conversation_download_and_it_is_logged(alice):
    attachment = sent(alice, "a.txt", b"alice's")
    staff = User.objects.create_user("carol", password="carol-password-1", is_staff=True)
    assert client_for(staff).get(attachment.download_path()).status_code == 404  # no permission yet
    assert not TranscriptAccess.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    staff = User.objects.get(pk=staff.pk)
    response = client_for(staff).get(attachment.download_path())
    assert response.status_code == 200 and body(response) == b"alice's"
    (access,) = TranscriptAccess.objects.all()
    assert (access.staff, access.kind, access.conversation_ref, access.query) == (
        staff,
        "download",
        attachment.message.conversation_id,
        f"attachment {attachment.pk}",
    )


def test_staff_cannot_read_a_file_that_was_never_sent(alice):
    attachment = attachments.store(alice, "draft.txt", b"not sent")
    staff = User.objects.create_superuser("root", password="root-password-1")
    assert client_for(staff).get(attachment.download_path()).status_code == 404


def test_an_unsent_file_can_be_removed_a_sent_one_cannot(alice, stored, django_capture_on_commit_callbacks):
    client = client_for(alice)
    unsent = upload(client, "a.txt", b"a").json()
    keep = sent(alice, "b.txt", b"b")
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(unsent["url"]).status_code == 204
    response = client.delete(keep.download_path())
    assert response.status_code == 409 and response.json()["error"] == "already_sent"
    assert [p.read_bytes() for p in stored_files(stored)] == [b"b"]


# -- files go with their rows ----------------------------------------------------------------------
def test_deleting_a_conversation_deletes_its_files(alice, stored, django_capture_on_commit_callbacks):
    attachment = sent(alice, "a.txt", b"a")
    assert len(stored_files(stored)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(alice).post(reverse("chat:delete", args=[attachment.message.conversation_id]))
    assert response.status_code == 302
    assert not Attachment.objects.exists()
    assert stored_files(stored) == []


def test_a_delete_rolled_back_keeps_the_file(alice, stored, django_capture_on_commit_callbacks):
    attachment = sent(alice, "a.txt", b"a")
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        attachment.message.conversation.delete()
        raise RuntimeError
    assert Attachment.objects.exists() and len(stored_files(stored)) == 1


def test_purge_removes_old_conversations_files_and_day_old_unsent_uploads(
    alice, stored, django_capture_on_commit_callbacks
):
    old = sent(alice, "old.txt", b"old")
    Conversation.objects.filter(pk=old.message.conversation_id).update(
        updated_at=timezone.now() - datetime.timedelta(days=40)
    )
    recent = sent(alice, "recent.txt", b"recent")
    stale = attachments.store(alice, "stale.txt", b"stale")
    fresh = attachments.store(alice, "fresh.txt", b"fresh")
    Attachment.objects.filter(pk=stale.pk).update(created_at=timezone.now() - datetime.timedelta(hours=25))
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("purge_conversations", "--older-than", "30", stdout=out)
    assert "Removed 1 files uploaded over a day ago" in out.getvalue()
    assert set(Attachment.objects.values_list("pk", flat=True)) == {recent.pk, fresh.pk}
    assert sorted(p.read_bytes() for p in stored_files(stored)) == [b"fresh", b"recent"]


# -- shown wherever the message is -----------------------------------------------------------------
def described(attachment: Attachment) -> dict:
    return {
        "id": attachment.pk,
        "name": attachment.name,
        "size": attachment.size,
        "kind": attachment.kind,
        "content_type": attachment.content_type,
        "url": f"/attachments/{attachment.pk}/",
        "tokens": attachment.token_count,
    }


def test_the_message_list_and_the_page_show_a_messages_files(alice):
    text = sent(alice, "notes.txt", b"some notes")
    conversation = text.message.conversation
    image = attachments.store(alice, "shot.png", files.image())
    image.message = text.message
    image.save()
    Message.objects.create(conversation=conversation, role="assistant", content="ok")
    client = client_for(alice)
    listed = client.get(reverse("chat:messages", args=[conversation.pk])).json()["messages"]
    assert [m["attachments"] for m in listed] == [[described(text), described(image)], []]
    detail = client.get(reverse("chat:message", args=[conversation.pk, text.message_id])).json()
    assert detail["attachments"] == [described(text), described(image)]
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert f'<a class="attachment-file" data-testid="attachment-file" href="/attachments/{text.pk}/"' in page
    assert f'<img src="/attachments/{image.pk}/" alt="shot.png"' in page


def test_exports_name_files_by_reference_never_their_bytes(alice):
    attachment = sent(alice, "secret.txt", b"the file's own words")
    conversation = attachment.message.conversation
    client = client_for(alice)
    exported = client.get(reverse("chat:export_json", args=[conversation.pk])).json()
    assert exported["messages"][0]["attachments"] == [described(attachment)]
    markdown = client.get(reverse("chat:export_md", args=[conversation.pk])).content.decode()
    assert (
        f"- Attached: [secret.txt](</attachments/{attachment.pk}/>) (text/plain; charset=utf-8, 20 bytes,"
        in markdown
    )
    assert "the file's own words" not in markdown and "the file's own words" not in json_text(exported)


def json_text(value) -> str:
    import json

    return json.dumps(value)


def test_the_admin_transcript_lists_files_with_download_links(alice):
    attachment = sent(alice, "notes.txt", b"some notes")
    staff = User.objects.create_superuser("root", password="root-password-1")
    page = client_for(staff).get(
        reverse("admin:chat_conversation_change", args=[attachment.message.conversation_id])
    )
    assert page.status_code == 200
    html = page.content.decode()
    assert f'<a href="/attachments/{attachment.pk}/" download>notes.txt</a>' in html
    assert "some notes" not in html


def test_serving_chat_does_not_load_the_image_and_pdf_libraries():
    """Pillow and pypdf are imported by the first upload that needs them, not by every worker
    at start-up (each process's memory; an idle socket's cost is measured in docs/benchmark.md)."""
    import subprocess
    import sys

    code = (
        "import django; django.setup(); import chatsite.asgi, chat.consumers, chat.attachments, chat.file_contents, chat.views; "
        "import sys; print(sorted(m for m in ('PIL', 'pypdf') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "CHAT_ENV_FILE": "/dev/null", "DJANGO_SETTINGS_MODULE": "chatsite.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_host_site_without_the_storage_is_told_what_to_set(settings):
    from django.core.exceptions import ImproperlyConfigured

    from chat.models import attachment_storage

    settings.STORAGES = {k: v for k, v in settings.STORAGES.items() if k != "chat_attachments"}
    with pytest.raises(ImproperlyConfigured, match='"chat_attachments"'):
        attachment_storage().exists("x")

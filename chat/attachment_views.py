"""Attachments over HTTP (docs/protocol.md, "Attachments"): upload, remove before sending,
download. What is in a file is read in chat.file_contents; limits and storage are
chat.attachments'.

Another user's attachment is a 404, as another user's conversation is. Staff with *view
conversation* may download a sent one, and each time is recorded in the audit trail.
"""

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods, require_POST

from chat import attachments, file_contents, tokens
from chat.models import Attachment, TranscriptAccess


def _refusal(code: str, detail: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


@login_required
@require_POST
async def upload(request: HttpRequest) -> JsonResponse:
    """Async, so that reading a file (a PDF's pages, an image decoded and resized) runs on a
    worker thread, and its tokens on the counting thread, not on the one thread that every
    socket's database calls share, where a sync view would run under ASGI (issue #12)."""
    user = await request.auser()
    try:
        name, data, model = await sync_to_async(_received, thread_sensitive=False)(request)
        await database_sync_to_async(attachments.check_limits)(user, len(data))
        found = await sync_to_async(file_contents.read, thread_sensitive=False)(name, data)
        target = await database_sync_to_async(attachments.target_for)(model)
        text_tokens = None
        if found.kind != Attachment.Kind.IMAGE:
            text_tokens = await tokens.counting(attachments.count_text, name, found.text, target)
        attachment = await database_sync_to_async(attachments.save)(user, name, found, target, text_tokens)
    except attachments.Refused as exc:
        return _refusal(exc.code, exc.detail, exc.status)
    described = {
        **attachments.payload(attachment),
        "note": attachment.note or None,
        "uncounted": attachments.uncounted(attachment),
    }
    return JsonResponse(described, status=201)


def _received(request: HttpRequest) -> tuple[str, bytes, str]:
    """The upload's name, bytes and model; refused by its declared size before a byte of it
    is read into memory."""
    files = request.FILES.getlist("file")
    if len(files) != 1:
        raise attachments.Refused("bad_file", 'Send one file, in the form field "file".')
    upload = files[0]
    attachments.check_size(upload.size)
    data = upload.read(settings.CHAT_ATTACHMENT_MAX_BYTES + 1)
    return attachments.clean_name(upload.name or "file"), data, request.POST.get("model", "")


@login_required
@require_http_methods(["GET", "HEAD", "DELETE"])
def attachment(request: HttpRequest, attachment_id: int) -> HttpResponse:
    if request.method == "DELETE":
        return _delete(request, attachment_id)
    return _download(request, attachment_id)


def _delete(request: HttpRequest, attachment_id: int) -> HttpResponse:
    found = Attachment.objects.filter(pk=attachment_id, owner=request.user).first()
    if found is None:
        raise Http404
    if found.message_id is not None:
        return _refusal(
            "already_sent", "That file was sent with a message; delete the conversation to remove it.", 409
        )
    found.delete()  # its file goes after the commit (chat.attachments.delete_stored_file)
    return HttpResponse(status=204)


def _download(request: HttpRequest, attachment_id: int) -> HttpResponse:
    found = Attachment.objects.select_related("message__conversation").filter(pk=attachment_id).first()
    if found is None:
        raise Http404
    if found.owner_id != request.user.pk:
        user = request.user
        conversation = found.message.conversation if found.message_id else None
        # Staff read only what was sent in a conversation, as its transcript shows it.
        if conversation is None or not (user.is_staff and user.has_perm("chat.view_conversation")):
            raise Http404
        TranscriptAccess.objects.create(
            staff=user,
            staff_username=user.get_username(),
            conversation=conversation,
            conversation_ref=conversation.pk,
            kind=TranscriptAccess.Kind.DOWNLOAD,
            query=f"attachment {found.pk}",
        )
    image = found.kind == Attachment.Kind.IMAGE
    response = FileResponse(
        found.file.open("rb"), as_attachment=not image, filename=found.name, content_type=found.content_type
    )
    response["X-Content-Type-Options"] = "nosniff"
    # Whatever a browser makes of the bytes, nothing in them may run or load anything.
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    response["Cache-Control"] = "private, no-store"
    return response

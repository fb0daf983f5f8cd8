"""Attachments over HTTP (docs/protocol.md, "Attachments"): upload, remove before sending,
download. The files themselves are read and checked in chat.attachments.

Another user's attachment is a 404, as another user's conversation is. Staff with *view
conversation* may download a sent one, and each time is recorded in the audit trail.
"""

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods, require_POST

from chat import attachments
from chat.models import Attachment, TranscriptAccess


def _refusal(code: str, detail: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


@login_required
@require_POST
def upload(request: HttpRequest) -> JsonResponse:
    upload = request.FILES.get("file")
    if upload is None or len(request.FILES.getlist("file")) != 1:
        return _refusal("bad_file", 'Send one file, in the form field "file".')
    # Refused by its declared size before a byte of it is read into memory.
    try:
        attachments.check_limits(request.user, upload.size)
        data = upload.read(upload.size + 1)
        attachment = attachments.store(
            request.user, upload.name or "file", data, request.POST.get("model", "")
        )
    except attachments.Refused as exc:
        return _refusal(exc.code, exc.detail, exc.status)
    return JsonResponse(
        {**attachments.payload(attachment), "note": attachment.note or None},
        status=201,
    )


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

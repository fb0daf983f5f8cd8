"""Shared links (issue #15): a conversation shown read-only to the site's other signed-in users.

The owner makes, changes and revokes the link from the chat page's ⋯ menu and sees who opened
it; the owner's endpoints go through Conversation.objects.for_user(), so another user's chat
is a 404 here as everywhere. The link itself, /s/<token>/, needs a signed-in user and is a
plain 404 once revoked (or never made): the same page whether it never existed or not.
"""

from django.contrib.auth.decorators import login_required
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import attachments
from chat.models import Conversation, Message, Share, ShareView

VIEWERS_SHOWN = 200  # the owner's list; more than that are counted, not named


def live_share(conversation: Conversation) -> Share | None:
    return conversation.shares.live().first()


def share_link(conversation: Conversation, user, show_system_prompt: bool) -> Share:
    """The conversation's live link, made if there is none; its choice of what it shows updated."""
    with transaction.atomic():
        share = conversation.shares.live().select_for_update().first()
        if share is None:
            try:
                with transaction.atomic():
                    return Share.objects.create(
                        conversation=conversation, created_by=user, show_system_prompt=show_system_prompt
                    )
            except IntegrityError:  # made at the same moment by another tab: use that one
                share = conversation.shares.live().select_for_update().get()
        if share.show_system_prompt != show_system_prompt:
            share.show_system_prompt = show_system_prompt
            share.save(update_fields=["show_system_prompt"])
        return share


def revoke(shares, user) -> int:
    """Ends the given live links for good; how many were live."""
    return shares.filter(revoked_at__isnull=True).update(revoked_at=timezone.now(), revoked_by=user)


def record_view(share: Share, viewer) -> None:
    """Counts one opening: a row per person and link, made on their first visit."""
    now = timezone.now()
    if ShareView.objects.filter(share=share, viewer=viewer).update(last_seen=now, count=F("count") + 1):
        return
    try:
        with transaction.atomic():
            ShareView.objects.create(share=share, viewer=viewer, first_seen=now, last_seen=now)
    except IntegrityError:  # their other tab made it first
        ShareView.objects.filter(share=share, viewer=viewer).update(last_seen=now, count=F("count") + 1)


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def dialog_state(request: HttpRequest, conversation: Conversation) -> dict:
    """What the owner's dialog shows: the live link, if any, and everyone who opened any link
    of this chat (a revoked one too: who has read it does not change when the link ends)."""
    share = live_share(conversation)
    views = (
        ShareView.objects.filter(share__conversation=conversation)
        .select_related("viewer", "share")
        .order_by("-last_seen")
    )
    return {
        "share": None
        if share is None
        else {
            "url": request.build_absolute_uri(share.link_path()),
            "created_at": _iso(share.created_at),
            "show_system_prompt": share.show_system_prompt,
        },
        "viewers": [
            {
                "username": view.viewer.get_username(),
                "first_seen": _iso(view.first_seen),
                "last_seen": _iso(view.last_seen),
                "count": view.count,
                "revoked": view.share.revoked_at is not None,
            }
            for view in views[:VIEWERS_SHOWN]
        ],
        "viewers_total": views.count(),
        "share_url": reverse("chat:share", args=[conversation.pk]),
        "revoke_url": reverse("chat:share_revoke", args=[conversation.pk]),
    }


def _owned(request: HttpRequest, conversation_id: int) -> Conversation:
    return get_object_or_404(Conversation.objects.for_user(request.user), pk=conversation_id)


def _flag(value: str | None) -> bool:
    """A checkbox as a form sends it: present (any of these values) or absent."""
    if value is None:
        return False
    if value.lower() in ("", "on", "1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _reply(request: HttpRequest, conversation: Conversation, status: int = 200) -> HttpResponse:
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse(dialog_state(request, conversation), status=status)
    return redirect(reverse("chat:conversation", args=[conversation.pk]))


@login_required
@require_http_methods(["GET", "POST"])
def share(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """GET: the link and who opened it. POST: make the link, or change what it shows
    (show_system_prompt: a checkbox)."""
    conversation = _owned(request, conversation_id)
    if request.method == "GET":
        return JsonResponse(dialog_state(request, conversation))
    try:
        show = _flag(request.POST.get("show_system_prompt"))
    except ValueError:
        error = "show_system_prompt must be on or off."
        return JsonResponse({"errors": {"show_system_prompt": [{"message": error}]}}, status=400)
    share_link(conversation, request.user, show)
    return _reply(request, conversation)


@login_required
@require_POST
def revoke_view(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    revoke(conversation.shares.all(), request.user)
    return _reply(request, conversation)


@login_required
@require_GET
def shared(request: HttpRequest, token: str) -> HttpResponse:
    """The conversation as it stands now, read-only: its current branch, no composer, no socket,
    nothing else of the owner's (no sidebar, no settings unless the owner chose to show them)."""
    share = Share.objects.live().select_related("conversation__user").filter(token=token).first()
    if share is None:
        raise Http404
    conversation = share.conversation
    if request.user.pk != conversation.user_id:  # the owner checking their link is not a reader
        record_view(share, request.user)
    messages = conversation.messages.current()
    if not share.show_system_prompt:
        messages = messages.exclude(role=Message.Role.SYSTEM)
    messages = list(messages)
    # Named, not linked: a file downloads only for its owner (and audited staff).
    files = attachments.of_messages(m.pk for m in messages if m.role == Message.Role.USER)
    for message in messages:
        message.attached = files.get(message.pk, [])
    response = render(
        request,
        "chat/shared.html",
        {
            "share": share,
            "conversation": conversation,
            "owner": conversation.user.get_username(),
            "chat_messages": messages,
            "read_only": True,
            "is_owner": request.user.pk == conversation.user_id,
        },
    )
    # Revoking must end reading, so no copy may be kept by a cache along the way.
    response["Cache-Control"] = "private, no-store"
    return response

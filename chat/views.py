"""The chat pages. Every lookup goes through Conversation.objects.for_user(), so another
user's conversation is a 404, never a 403 that would confirm it exists."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from chat import attachments, budgets, exports, providers, replies, sidebar, tokens, versions, worker
from chat.forms import ConversationSettingsForm, TitleForm
from chat.models import Conversation, Message
from chat.rendering import format_stats, quiet_stats, render_markdown, stats_help


def _owned(request: HttpRequest, conversation_id: int) -> Conversation:
    return get_object_or_404(Conversation.objects.for_user(request.user), pk=conversation_id)


def _sidebar(request: HttpRequest) -> tuple[list[dict], str]:
    """The user's chats for the sidebar, narrowed by ?q= over titles and message text."""
    query = request.GET.get("q", "").strip()
    return [sidebar.item(c) for c in sidebar.conversations(request.user, query)], query


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> JsonResponse:
    """The sidebar's list as JSON, for searching as you type (static/chat/sidebar.js)."""
    items, query = _sidebar(request)
    return JsonResponse({"query": query, "conversations": items, "limit": sidebar.LIMIT})


def _urls(conversation: Conversation) -> dict:
    """What the page needs to work on a conversation: its sidebar entry's links and the rest."""
    pk = conversation.pk
    return {
        **sidebar.item(conversation),
        "messages_url": reverse("chat:messages", args=[pk]),
        "ws_path": f"/ws/chat/{pk}/",
        "settings_url": reverse("chat:settings", args=[pk]),
        "share_url": reverse("chat:share", args=[pk]),
        "revoke_share_url": reverse("chat:share_revoke", args=[pk]),
    }


def _can_count(conversation: Conversation | None) -> bool:
    target = providers.resolve(conversation or Conversation())
    return tokens.can_count(target.model, target.encoding)


def conversation_url(conversation: Conversation) -> str:
    return reverse("chat:conversation", args=[conversation.pk])


def _page(
    request: HttpRequest,
    conversation: Conversation | None,
    settings_form: ConversationSettingsForm | None = None,
    status: int = 200,
) -> HttpResponse:
    conversations, query = _sidebar(request)
    if conversation is not None:  # a reply left "streaming" by a dead server shows as interrupted
        replies.recover_stale(conversation.pk, worker.live_ids())
    messages = list(conversation.messages.current()) if conversation else []
    if conversation is not None:
        found = versions.of(conversation.pk, [m.pk for m in messages])
        files = attachments.of_messages(m.pk for m in messages if m.role == Message.Role.USER)
        for message in messages:
            message.versions = found.get(message.pk)
            message.attached = files.get(message.pk, [])
    last_reply = next((m for m in reversed(messages) if m.role == Message.Role.ASSISTANT), None)
    budget = budgets.remaining(request.user.pk)
    if settings_form is None:
        settings_form = ConversationSettingsForm(instance=conversation)
    config = {
        # The picker's values that mean the demo model: its notice shows while one is picked.
        "demo_models": settings_form.demo_values,
        "conversation": _urls(conversation) if conversation else None,
        "create_url": reverse("chat:create"),
        "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        "demo": settings.CHAT_DEMO,
        "budget": budget,  # worded by the page (static/chat/budget.js), here and after each reply
        # Whether this chat's replies can be counted (else the budget line says it cannot).
        "counting": _can_count(conversation),
        "how_to_count": tokens.HOW_TO_COUNT,
    }
    return render(
        request,
        "chat/page.html",
        {
            "conversation": conversation,
            "conversations": conversations,
            "query": query,
            "blank_item": sidebar.BLANK_ITEM,
            "chat_messages": messages,
            "last_reply_id": last_reply.pk if last_reply else None,
            "settings_form": settings_form,
            "demo_offered": bool(settings_form.demo_values),
            "demo": settings_form.picked in settings_form.demo_values,
            "config": config,
            # Unsaved messages render the <template>s the page clones for new messages,
            # so a message has one markup whether the server or static/chat/messages.js draws it.
            "blank_user": Message(role=Message.Role.USER),
            "blank_reply": Message(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING),
        },
        status=status,
    )


@login_required
@require_GET
def new_chat(request: HttpRequest) -> HttpResponse:
    """`/` (and `/new/`) is always a new chat (issue #14): reopening the latest conversation
    made a new question land in an old one. Earlier chats are a click away in the sidebar."""
    return _page(request, None)


@login_required
@require_GET
def conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    return _page(request, _owned(request, conversation_id))


def _wants_json(request: HttpRequest) -> bool:
    return request.headers.get("Accept", "").startswith("application/json")


@login_required
@require_POST
def create(request: HttpRequest) -> HttpResponse:
    """A new chat, with the model and system prompt picked in the header before its first
    message (issue #14), so that message is answered by them. A model the site does not offer
    creates nothing: the page gets the error and keeps the message."""
    title_form = TitleForm(request.POST)
    title = title_form.cleaned_data["title"] if title_form.is_valid() else ""
    form = ConversationSettingsForm(request.POST, instance=Conversation(user=request.user, title=title))
    if not form.is_valid():
        if _wants_json(request):
            return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
        return _page(request, None, settings_form=form, status=400)
    conversation = form.save()
    if _wants_json(request):
        return JsonResponse({**_urls(conversation), "title": conversation.title}, status=201)
    return redirect(conversation_url(conversation))


@login_required
@require_POST
def rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    form = TitleForm(request.POST, instance=conversation)
    if form.is_valid():
        # update_fields: renaming is not activity, so it must not reorder the sidebar.
        form.instance.save(update_fields=["title"])
    elif _wants_json(request):
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    if _wants_json(request):
        return JsonResponse({"id": conversation.pk, "title": conversation.title})
    return redirect(conversation_url(conversation))


@login_required
@require_POST
def delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    deleted = conversation.pk
    conversation.delete()
    if _wants_json(request):  # the sidebar's menu: the page stays where it is
        return JsonResponse({"id": deleted, "deleted": True, "new_url": reverse("chat:new")})
    return redirect("chat:home")


@login_required
@require_POST
def update_settings(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    form = ConversationSettingsForm(request.POST, instance=conversation)
    if not form.is_valid():
        if _wants_json(request):
            return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
        # The page again, with the dialog open on the errors and the choices kept.
        conversation.refresh_from_db()
        return _page(request, conversation, settings_form=form, status=400)
    form.instance.save(update_fields=["model", "system_prompt"])
    if _wants_json(request):
        label = dict(form.fields["model"].widget.choices).get(form.picked, conversation.model)
        return JsonResponse({"id": conversation.pk, "model": conversation.model, "label": label})
    return redirect(conversation_url(conversation))


@login_required
@require_GET
def export_markdown(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    response = HttpResponse(
        exports.conversation_markdown(conversation), content_type="text/markdown; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{exports.filename(conversation, "md")}"'
    return response


@login_required
@require_GET
def export_json(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _owned(request, conversation_id)
    response = JsonResponse(exports.conversation_json(conversation), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{exports.filename(conversation, "json")}"'
    return response


def message_payload(
    message: Message, found: versions.Versions | None = None, attached: list[dict] | None = None
) -> dict:
    """One message as the page needs it; ``html`` is sanitised (user text is shown verbatim).
    ``versions``: where it stands among its versions (chat.versions), null with only one;
    ``attachments``: its files (chat.attachments.payload), empty for a reply."""
    is_reply = message.role == Message.Role.ASSISTANT
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "reasoning": message.reasoning,
        "refusal": message.refusal,
        "html": render_markdown(message.content) if is_reply else "",
        "status": message.status,
        "finish_reason": message.finish_reason,
        "model": message.model,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
        "error_code": message.error_code,
        "error_detail": message.error_detail,
        "stats": format_stats(message) if is_reply else "",
        "stats_help": stats_help(message) if is_reply else "",
        "stats_quiet": quiet_stats(message) if is_reply else "",
        "usage": message.usage,
        "versions": found.as_dict() if found else None,
        "attachments": attached or [],
    }


@login_required
@require_GET
def message_detail(request: HttpRequest, conversation_id: int, message_id: int) -> JsonResponse:
    message = get_object_or_404(_owned(request, conversation_id).messages, pk=message_id)
    found = versions.of(conversation_id, [message.pk]).get(message.pk)
    return JsonResponse(
        message_payload(message, found, attachments.of_messages([message.pk]).get(message.pk))
    )


@login_required
@require_GET
def message_list(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """The conversation as it stands (the branch shown), for a page that was offline and must
    catch up, or that was told another version was chosen."""
    messages = list(_owned(request, conversation_id).messages.current())
    found = versions.of(conversation_id, [m.pk for m in messages])
    files = attachments.of_messages(m.pk for m in messages if m.role == Message.Role.USER)
    return JsonResponse(
        {"messages": [message_payload(m, found.get(m.pk), files.get(m.pk)) for m in messages]}
    )

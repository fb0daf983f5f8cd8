"""Staff review: conversations, read-only transcripts, usage, and an audit trail of who looked."""

import csv

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, IntegerField, OuterRef, Subquery, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, TruncDate
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from chat import exports
from chat.models import Conversation, Message, TranscriptAccess
from chat.rendering import render_markdown


def _per_conversation(aggregate):
    """A correlated subquery: computed for the rows on the page only, and never multiplied
    by the joins that searching message content adds."""
    return Subquery(
        Message.objects.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(value=aggregate)
        .values("value"),
        output_field=IntegerField(),
    )


def _log_access(request, conversation, kind) -> None:
    TranscriptAccess.objects.create(
        staff=request.user,
        staff_username=request.user.get_username(),
        conversation=conversation,
        conversation_ref=conversation.pk,
        kind=kind,
    )


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    show_change_link = False
    fields = readonly_fields = (
        "role",
        "content",
        "status",
        "finish_reason",
        "model",
        "token_count",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "duration_ms",
        "error_code",
        "superseded",
        "created_at",
    )

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "user",
        "model_or_default",
        "messages",
        "prompt_tokens",
        "completion_tokens",
        "updated_at",
        "transcript_link",
    )
    list_select_related = ("user",)
    list_filter = ("updated_at", "model", ("user", admin.RelatedOnlyFieldListFilter))
    search_fields = ("title", "user__username", "messages__content")
    show_full_result_count = False  # no COUNT(*) over the whole table on every page
    date_hierarchy = "updated_at"
    readonly_fields = ("user", "created_at", "updated_at")
    fields = ("user", "title", "model", "system_prompt", "created_at", "updated_at")
    inlines = [MessageInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_count=_per_conversation(Count("id")),
                prompt_total=_per_conversation(Sum("prompt_tokens")),
                completion_total=_per_conversation(Sum("completion_tokens")),
            )
        )

    @admin.display(description="model", ordering="model")
    def model_or_default(self, obj):
        return obj.model or "(default)"

    @admin.display(description="messages", ordering="message_count")
    def messages(self, obj):
        return obj.message_count or 0

    @admin.display(description="prompt tokens", ordering="prompt_total")
    def prompt_tokens(self, obj):
        return obj.prompt_total or 0

    @admin.display(description="completion tokens", ordering="completion_total")
    def completion_tokens(self, obj):
        return obj.completion_total or 0

    @admin.display(description="transcript")
    def transcript_link(self, obj):
        return format_html(
            '<a href="{}">read</a>', reverse("admin:chat_conversation_transcript", args=[obj.pk])
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/transcript/", view(self.transcript_view), name="chat_conversation_transcript"),
            path("<int:pk>/export.md", view(self.export_markdown), name="chat_conversation_export_md"),
            path("<int:pk>/export.json", view(self.export_json), name="chat_conversation_export_json"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        conversation = self.get_object(request, object_id)
        if conversation is not None and request.method == "GET":
            _log_access(request, conversation, TranscriptAccess.Kind.VIEW)
        return super().change_view(request, object_id, form_url, extra_context)

    def _conversation(self, request, pk):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(Conversation.objects.select_related("user"), pk=pk)

    def transcript_view(self, request, pk):
        conversation = self._conversation(request, pk)
        _log_access(request, conversation, TranscriptAccess.Kind.VIEW)
        messages = list(conversation.messages.order_by("id"))
        for message in messages:
            message.html = mark_safe(render_markdown(message.content))  # nh3-sanitised
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "conversation": conversation,
            "transcript": messages,
            "title": f"Transcript: {conversation}",
        }
        return TemplateResponse(request, "admin/chat/conversation/transcript.html", context)

    def export_markdown(self, request, pk):
        conversation = self._conversation(request, pk)
        _log_access(request, conversation, TranscriptAccess.Kind.EXPORT)
        response = HttpResponse(
            exports.conversation_markdown(conversation), content_type="text/markdown; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="{exports.filename(conversation, "md")}"'
        return response

    def export_json(self, request, pk):
        conversation = self._conversation(request, pk)
        _log_access(request, conversation, TranscriptAccess.Kind.EXPORT)
        response = JsonResponse(exports.conversation_json(conversation), json_dumps_params={"indent": 2})
        response["Content-Disposition"] = f'attachment; filename="{exports.filename(conversation, "json")}"'
        return response


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "conversation",
        "owner",
        "role",
        "status",
        "finish_reason",
        "model",
        "token_count",
        "prompt_tokens",
        "completion_tokens",
        "created_at",
    )
    list_select_related = ("conversation__user",)
    list_filter = ("role", "status", "finish_reason", "model", "error_code", "created_at")
    search_fields = ("content",)
    show_full_result_count = False
    date_hierarchy = "created_at"
    raw_id_fields = ("conversation",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(ordering="conversation__user__username")
    def owner(self, obj):
        return obj.conversation.user

    def get_urls(self):
        return [
            path("usage/", self.admin_site.admin_view(self.usage_view), name="chat_message_usage"),
            *super().get_urls(),
        ]

    def usage_view(self, request):
        """Tokens by user, model and day: ours (tiktoken) beside the provider's own figures."""
        rows = usage_rows(request.GET.get("days"))
        if request.GET.get("format") == "csv":
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="usage.csv"'
            writer = csv.writer(response)
            writer.writerow(USAGE_COLUMNS)
            for row in rows:
                writer.writerow([row[column] for column in USAGE_COLUMNS])
            return response
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Token usage",
            "rows": rows,
            "columns": USAGE_COLUMNS,
        }
        return TemplateResponse(request, "admin/chat/message/usage.html", context)


USAGE_COLUMNS = (
    "day",
    "user",
    "model",
    "replies",
    "prompt_tokens",
    "completion_tokens",
    "upstream_prompt_tokens",
    "upstream_completion_tokens",
    "mismatch",
)


def _usage_key(key):
    return Cast(KeyTextTransform(key, "usage"), IntegerField())


def usage_rows(days: str | None = None) -> list[dict]:
    replies = Message.objects.filter(role=Message.Role.ASSISTANT).exclude(status=Message.Status.STREAMING)
    if days and days.isdigit():
        from datetime import timedelta

        from django.utils import timezone

        replies = replies.filter(created_at__gte=timezone.now() - timedelta(days=int(days)))
    rows = (
        replies.annotate(day=TruncDate("created_at"))
        .values("day", "conversation__user__username", "model")
        .annotate(
            replies=Count("id"),
            prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            completion_tokens=Coalesce(Sum("completion_tokens"), 0),
            upstream_prompt_tokens=Sum(_usage_key("prompt_tokens")),
            upstream_completion_tokens=Sum(_usage_key("completion_tokens")),
        )
        .order_by("-day", "conversation__user__username", "model")
    )
    result = []
    for row in rows:
        row["user"] = row.pop("conversation__user__username")
        upstream = (row["upstream_prompt_tokens"], row["upstream_completion_tokens"])
        ours = (row["prompt_tokens"], row["completion_tokens"])
        row["mismatch"] = upstream != (None, None) and upstream != ours
        result.append(row)
    return result


@admin.register(TranscriptAccess)
class TranscriptAccessAdmin(admin.ModelAdmin):
    list_display = ("at", "staff_username", "kind", "conversation_ref", "conversation")
    list_filter = ("kind", "at", "staff_username")
    search_fields = ("staff_username", "=conversation_ref")
    list_select_related = ("conversation",)
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

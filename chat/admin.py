"""Staff review: conversations, read-only transcripts, usage, and an audit trail of who looked."""

import csv

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin
from django.contrib import messages as admin_messages
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

from chat import exports, upstream
from chat.models import Budget, ChatModel, Conversation, Invite, Message, Provider, TranscriptAccess
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
    # Titles and owners only: a content search joins every message (105 s on SQLite with a
    # million messages); message text is searched in the Messages list, which links here.
    search_fields = ("title", "user__username")
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


class FinishReasonFilter(admin.SimpleListFilter):
    title = "finish reason"
    parameter_name = "finish_reason"

    def lookups(self, request, model_admin):
        reasons = ("stop", "length", "content_filter", "tool_calls", "cancelled", "error", "interrupted")
        return [(reason, reason) for reason in reasons]

    def queryset(self, request, queryset):
        return queryset.filter(finish_reason=self.value()) if self.value() else queryset


class HasErrorFilter(admin.SimpleListFilter):
    title = "error"
    parameter_name = "has_error"

    def lookups(self, request, model_admin):
        return [("yes", "with an error"), ("no", "without")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(error_code="")
        if self.value() == "no":
            return queryset.filter(error_code="")
        return queryset


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
        "in_transcript",
    )
    list_select_related = ("conversation__user",)
    # Fixed choices only: a plain field filter runs SELECT DISTINCT over the whole table,
    # and date_hierarchy truncates every row's date (6.9 s with a million messages).
    list_filter = ("role", "status", FinishReasonFilter, HasErrorFilter, "created_at")
    search_fields = ("content",)
    show_full_result_count = False
    raw_id_fields = ("conversation",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="transcript")
    def in_transcript(self, obj):
        url = reverse("admin:chat_conversation_transcript", args=[obj.conversation_id])
        return format_html('<a href="{}#message-{}">read in context</a>', url, obj.pk)

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


class ProviderForm(forms.ModelForm):
    """The API key is write-only: never rendered back; leave it blank to keep the stored one."""

    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current key.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")
    base_url = forms.URLField(assume_scheme="https", help_text="Ends in /v1, e.g. http://localhost:11434/v1")

    class Meta:
        model = Provider
        fields = ("name", "base_url", "api_key", "clear_api_key", "api_key_env", "extra_headers", "enabled")

    def clean_extra_headers(self):
        headers = self.cleaned_data["extra_headers"] or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise forms.ValidationError('Headers must be a JSON object of strings, e.g. {"X-Title": "Chat"}.')
        return headers

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.api_key = ""
        elif not self.cleaned_data.get("api_key") and provider.pk:
            provider.api_key = Provider.objects.only("api_key").get(pk=provider.pk).api_key
        if commit:
            provider.save()
        return provider


class ChatModelInline(admin.TabularInline):
    model = ChatModel
    extra = 0
    fields = (
        "name",
        "display_name",
        "encoding",
        "context_window",
        "stream",
        "include_usage",
        "api_style",
        "enabled",
        "is_default",
    )


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("name", "base_url", "has_key", "enabled")
    inlines = [ChatModelInline]
    actions = ["fetch_models"]

    @admin.display(boolean=True, description="key set")
    def has_key(self, obj):
        return bool(obj.key())

    @admin.action(description="Fetch models from the provider's /models")
    def fetch_models(self, request, queryset):
        for source in queryset:
            target = upstream.Provider(
                base_url=source.base_url.rstrip("/"),
                api_key=source.key(),
                headers=tuple((source.extra_headers or {}).items()),
            )
            try:
                names = async_to_sync(upstream.list_models)(target)
            except upstream.UpstreamError as exc:
                self.message_user(request, f"{source}: {exc.detail}", admin_messages.ERROR)
                continue
            known = set(source.models.values_list("name", flat=True))
            ChatModel.objects.bulk_create(
                [ChatModel(provider=source, name=n) for n in names if n not in known]
            )
            self.message_user(
                request, f"{source}: {len(names)} models offered, {len(set(names) - known)} added."
            )


@admin.register(ChatModel)
class ChatModelAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "name",
        "provider",
        "context_window",
        "api_style",
        "stream",
        "enabled",
        "is_default",
    )
    list_filter = ("provider", "enabled", "api_style")
    list_select_related = ("provider",)
    search_fields = ("name", "display_name")


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("__str__", "tokens_per_day", "tokens_per_month", "sends_per_minute")
    list_select_related = ("user", "group")
    raw_id_fields = ("user",)


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    """Invites to sign up. The link is shown once saved (messages and the change page);
    the token itself is read-only."""

    list_display = ("__str__", "email", "status", "created_by", "created_at", "expires_at", "used_by")
    list_select_related = ("created_by", "used_by")
    list_filter = ("created_at", "used_at")
    search_fields = ("email", "used_by__username")
    fields = ("email", "expires_at", "token", "created_by", "created_at", "used_by", "used_at")
    readonly_fields = ("token", "created_by", "created_at", "used_by", "used_at")
    show_full_result_count = False

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        link = request.build_absolute_uri(obj.get_absolute_url())
        self.message_user(request, f"Invite link (send it to the person; it works once): {link}")
        return super().response_add(request, obj, post_url_continue)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["invite_link"] = request.build_absolute_uri(obj.get_absolute_url())
        return super().render_change_form(request, context, add, change, form_url, obj)

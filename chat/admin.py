"""Staff review: conversations (their transcripts), messages, usage, the audit trail of who
looked; and providers, models, budgets and invites. The transcript is built in chat/review.py,
the usage report in chat/usage.py, the provider form in chat/provider_form.py."""

import csv
import json

from asgiref.sync import async_to_sync
from django.contrib import admin
from django.contrib import messages as admin_messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Sum, URLField
from django.db.models.constants import LOOKUP_SEP
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timezone import localtime

from chat import exports, image_tokens, review, shares, upstream, usage
from chat.models import (
    Budget,
    ChatModel,
    Conversation,
    ImageTokenRule,
    Invite,
    Message,
    Provider,
    Share,
    ShareView,
    TranscriptAccess,
)
from chat.provider_form import ProviderForm, masked_headers
from chat.rendering import token_text
from chat.usage import total_text

# Fields no admin list may be filtered on (?api_key__startswith=sk-a): a filter that shows
# whether a row matches reads a secret, or message text, one guess at a time, unlogged.
UNFILTERABLE = frozenset(
    {"api_key", "extra_headers", "token", "content", "reasoning", "refusal", "system_prompt"}
)


class ChatAdmin(admin.ModelAdmin):
    def lookup_allowed(self, lookup, value, request=None) -> bool:
        if UNFILTERABLE.intersection(lookup.split(LOOKUP_SEP)):
            return False
        return super().lookup_allowed(lookup, value, request)


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


def _log_access(request, conversation, kind, query: str = "") -> None:
    TranscriptAccess.objects.create(
        staff=request.user,
        staff_username=request.user.get_username(),
        conversation=conversation,
        conversation_ref=conversation.pk,
        kind=kind,
        query=query,
    )


def _when(moment) -> str:
    """A time as a reviewer reads it in a list: "30 Nov 2026, 10:16", in the site's zone."""
    return date_format(localtime(moment), "j M Y, H:i")


class ReviewFigures:
    """A message's figures formatted for a reviewer: the admin would print the stored floats
    (3248.337167000045) and bare integers, and 0 or a blank for a count never made. The
    streaming machinery (seq, lease_until) and the history counts kept for budgets
    (tokens_before, messages_before) are never listed."""

    @admin.display(description="tokens", ordering="token_count")
    def tokens(self, obj):
        return None if obj.status == Message.Status.STREAMING else token_text(obj.token_count)

    @admin.display(description="prompt tokens", ordering="prompt_tokens")
    def prompt(self, obj):
        return self._reply_tokens(obj, obj.prompt_tokens)

    @admin.display(description="completion tokens", ordering="completion_tokens")
    def completion(self, obj):
        return self._reply_tokens(obj, obj.completion_tokens)

    @staticmethod
    def _reply_tokens(obj, count: int | None) -> str | None:
        """A reply's count, "unknown" when it was not made; nothing for a person's message."""
        if obj.role != Message.Role.ASSISTANT or obj.status == Message.Status.STREAMING:
            return None
        return token_text(count)


@admin.register(Conversation)
class ConversationAdmin(ChatAdmin):
    """A conversation's page is its transcript, read-only (issue #14): a reviewer reads, and
    the owner, not staff, decides its title, model and system prompt. Staff who may delete
    conversations still can, from the transcript or the list."""

    list_display = (
        "__str__",
        "user",
        "model_or_default",
        "messages",
        "prompt_tokens",
        "completion_tokens",
        "updated",
    )
    list_select_related = ("user",)
    list_filter = ("updated_at", "model", ("user", admin.RelatedOnlyFieldListFilter))
    # Titles and owners only: a content search joins every message of every conversation, a
    # scan of the largest table on each search; message text is searched in the Messages
    # list, which links here.
    search_fields = ("title", "user__username")
    show_full_result_count = False  # no COUNT(*) over the whole table on every page
    date_hierarchy = "updated_at"

    def get_queryset(self, request):
        replies = Q(role=Message.Role.ASSISTANT) & ~Q(status=Message.Status.STREAMING)
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_count=_per_conversation(Count("id")),
                prompt_total=_per_conversation(Sum("prompt_tokens")),
                completion_total=_per_conversation(Sum("completion_tokens")),
                prompt_unknown=_per_conversation(Count("id", filter=replies & Q(prompt_tokens__isnull=True))),
                completion_unknown=_per_conversation(
                    Count("id", filter=replies & Q(completion_tokens__isnull=True))
                ),
            )
        )

    def has_add_permission(self, request) -> bool:
        return False  # conversations are started on the chat page, by their owner

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="last activity", ordering="updated_at")
    def updated(self, obj):
        return _when(obj.updated_at)

    @admin.display(description="model", ordering="model")
    def model_or_default(self, obj):
        return obj.model or "(default)"

    @admin.display(description="messages", ordering="message_count")
    def messages(self, obj):
        return obj.message_count or 0

    @admin.display(description="prompt tokens", ordering="prompt_total")
    def prompt_tokens(self, obj):
        return total_text(obj.prompt_total, obj.prompt_unknown or 0)

    @admin.display(description="completion tokens", ordering="completion_total")
    def completion_tokens(self, obj):
        return total_text(obj.completion_total, obj.completion_unknown or 0)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            # The transcript had a page of its own before issue #14: old links still lead to it.
            path("<int:pk>/transcript/", view(self.transcript_redirect), name="chat_conversation_transcript"),
            path("<int:pk>/export.md", view(self.export_markdown), name="chat_conversation_export_md"),
            path("<int:pk>/export.json", view(self.export_json), name="chat_conversation_export_json"),
            *super().get_urls(),
        ]

    def _conversation(self, request, pk):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(Conversation.objects.select_related("user"), pk=pk)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The transcript, in place of Django's change form; opening it is logged."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if not str(object_id).isdigit():
            raise Http404
        conversation = self._conversation(request, object_id)
        _log_access(request, conversation, TranscriptAccess.Kind.VIEW)
        transcript = review.entries(conversation)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "conversation": conversation,
            "transcript": transcript,
            "totals": review.totals(conversation),
            "unknown_hint": review.UNKNOWN_HINT if any(entry.unknown for entry in transcript) else "",
            "has_delete_permission": self.has_delete_permission(request, conversation),
            "title": str(conversation),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/chat/conversation/transcript.html", context)

    def transcript_redirect(self, request, pk):
        return redirect(reverse("admin:chat_conversation_change", args=[pk]))

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
class MessageAdmin(ReviewFigures, ChatAdmin):
    """Message metadata. Text is read in the conversation's transcript, where the read is
    logged; a search of the text is logged against every conversation it shows."""

    # What a reviewer asks of a message, narrow enough for a 1280 px window: no row id; a
    # reply's status and finish reason beside its role.
    list_display = (
        "written",
        "conversation",
        "owner",
        "kind",
        "model",
        "tokens",
        "prompt",
        "completion",
    )
    list_display_links = None  # a message is read in its conversation: `written` links there
    list_select_related = ("conversation__user",)
    # Fixed choices only: a plain field filter runs SELECT DISTINCT over the whole table,
    # and date_hierarchy truncates every row's date, so each would scan every message on
    # every page load.
    list_filter = ("role", "status", FinishReasonFilter, HasErrorFilter, "created_at")
    search_fields = ("content",)
    show_full_result_count = False
    raw_id_fields = ("conversation",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_search_fields(self, request):
        # The changelist logs its searches; the admin's autocomplete endpoint, which would
        # search the same field for any foreign key to Message, does not.
        match = request.resolver_match
        if match is not None and match.url_name == "chat_message_changelist":
            return self.search_fields
        return ()

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", None) and response.context_data.get("cl")
        if changelist is not None and changelist.query:
            shown = {message.conversation for message in changelist.result_list}
            for conversation in sorted(shown, key=lambda c: c.pk):
                _log_access(request, conversation, TranscriptAccess.Kind.SEARCH, changelist.query)
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The page would show the text unlogged: send staff to it in the transcript instead."""
        message = self.get_object(request, object_id)
        if message is None or request.method != "GET":  # 404, or 403: messages are not edited here
            return super().change_view(request, object_id, form_url, extra_context)
        if not self.has_view_permission(request, message):
            raise PermissionDenied
        url = reverse("admin:chat_conversation_change", args=[message.conversation_id])
        return redirect(f"{url}#message-{message.pk}")

    @admin.display(description="written", ordering="created_at")
    def written(self, obj):
        """When, linked to the message in its conversation's transcript (where reads are logged)."""
        url = reverse("admin:chat_conversation_change", args=[obj.conversation_id])
        return format_html(
            '<a href="{}#message-{}" title="Read in context">{}</a>', url, obj.pk, _when(obj.created_at)
        )

    @admin.display(description="message", ordering="role")
    def kind(self, obj):
        """ "user", or "assistant: finished (stop)": a person's message has no status."""
        if obj.role != Message.Role.ASSISTANT:
            return obj.get_role_display().lower()
        status = obj.get_status_display().lower()
        return f"assistant: {status} ({obj.finish_reason})" if obj.finish_reason else f"assistant: {status}"

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
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = usage.usage_rows(request.GET.get("days"))
        if request.GET.get("format") == "csv":
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="usage.csv"'
            writer = csv.writer(response)
            writer.writerow(usage.USAGE_COLUMNS)
            for row in rows:
                writer.writerow(["" if row[c] is None else row[c] for c in usage.USAGE_COLUMNS])
            return response
        totals = usage.usage_totals(rows)
        unknown = totals["prompt_not_counted"] or totals["completion_not_counted"]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Token usage",
            "rows": rows,
            "totals": totals,
            "headings": usage.USAGE_HEADINGS.values(),
            "chart": usage.usage_chart(rows),
            "unknown_hint": review.UNKNOWN_HINT if unknown else "",
            "days": request.GET.get("days", ""),
        }
        return TemplateResponse(request, "admin/chat/message/usage.html", context)


@admin.register(TranscriptAccess)
class TranscriptAccessAdmin(ChatAdmin):
    list_display = ("at", "staff_username", "kind", "conversation_ref", "conversation", "query")
    list_filter = ("kind", "at", "staff_username")
    search_fields = ("staff_username", "=conversation_ref", "query")
    list_select_related = ("conversation",)
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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
        "accepts_images",
        "enabled",
        "is_default",
    )


@admin.register(Provider)
class ProviderAdmin(ChatAdmin):
    """A key is never rendered, not even read-only: staff who may only view providers see
    whether one is set and the names of the headers; those who may change them, write-only
    fields."""

    form = ProviderForm
    list_display = ("name", "base_url", "has_key", "enabled")
    readonly_fields = ("key_status", "headers")
    inlines = [ChatModelInline]
    actions = ["fetch_models"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "base_url", "api_key", "api_key_env", "extra_headers", "enabled")
        if self.has_change_permission(request, obj):
            return (
                "name",
                "base_url",
                "key_status",
                "api_key",
                "clear_api_key",
                "api_key_env",
                "extra_headers",
                "enabled",
            )
        # Django shows every listed field's stored value to a viewer: list no secret field.
        return ("name", "base_url", "key_status", "api_key_env", "headers", "enabled")

    @admin.display(boolean=True, description="key set")
    def has_key(self, obj):
        return bool(obj.key())

    @admin.display(description="API key")
    def key_status(self, obj):
        if obj.api_key_env:
            found = "set" if obj.key() else "not set (or not allowed)"
            return f"From the environment variable {obj.api_key_env}: {found}."
        return "A key is stored." if obj.api_key else "No key."

    @admin.display(description="extra headers")
    def headers(self, obj):
        return json.dumps(masked_headers(obj.extra_headers), ensure_ascii=False)

    @admin.action(description="Fetch models from the provider's /models", permissions=["change"])
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
class ChatModelAdmin(ChatAdmin):
    list_display = (
        "__str__",
        "name",
        "provider",
        "context_window",
        "api_style",
        "stream",
        "accepts_images",
        "image_rule",
        "enabled",
        "is_default",
    )
    list_filter = ("provider", "enabled", "api_style", "accepts_images")
    list_select_related = ("provider",)
    search_fields = ("name", "display_name")

    @admin.display(description="image rule")
    def image_rule(self, obj):
        """Which image token rule counts this model's images: a model that reads images but
        has none shows it here, before its images are counted as unknown."""
        rule = image_tokens.rule_for(obj.name)
        return rule.pattern if rule else "none"


@admin.register(ImageTokenRule)
class ImageTokenRuleAdmin(ChatAdmin):
    """The image formulas by model (chat/image_tokens.py). The worked example shows what a
    change does before it reaches a user's count."""

    list_display = (
        "pattern",
        "method",
        "base_tokens",
        "tokens_per_tile",
        "patch_multiplier",
        "patch_cap",
        "priority",
        "example",
    )
    list_filter = ("method",)
    search_fields = ("pattern",)
    readonly_fields = ("example",)
    formfield_overrides = {URLField: {"assume_scheme": "https"}}
    fieldsets = (
        (None, {"fields": ("pattern", "method", "priority", "source")}),
        ("Tiles", {"fields": ("base_tokens", "tokens_per_tile")}),
        ("Patches", {"fields": ("patch_multiplier", "patch_cap")}),
        ("What it gives", {"fields": ("example",)}),
    )

    @admin.display(description="a 1024×1024 image")
    def example(self, obj):
        if obj is None or obj.pk is None:
            return "Shown once saved."
        rule = image_tokens.Rule.of(obj)
        high = image_tokens.cost(rule, 1024, 1024, "high")
        low = image_tokens.cost(rule, 1024, 1024, "low")
        return f"{high} tokens" if high == low else f"{high} tokens (high detail), {low} (low)"


@admin.register(Budget)
class BudgetAdmin(ChatAdmin):
    list_display = ("__str__", "tokens_per_day", "tokens_per_month", "sends_per_minute")
    list_select_related = ("user", "group")
    raw_id_fields = ("user",)


@admin.register(Invite)
class InviteAdmin(ChatAdmin):
    """Invites to sign up. The link is the credential: it is shown (once saved, and on the
    change page) only to staff who may add or change invites, who could make a working one
    anyway; staff who may only view them see who they are for and their status."""

    list_display = ("__str__", "email", "status", "created_by", "created_at", "expires_at", "used_by")
    list_select_related = ("created_by", "used_by")
    list_filter = ("created_at", "used_at")
    search_fields = ("email", "used_by__username")
    fields = ("email", "expires_at", "token", "created_by", "created_at", "used_by", "used_at")
    readonly_fields = ("token", "created_by", "created_at", "used_by", "used_at")
    show_full_result_count = False

    def shares_links(self, request) -> bool:
        return self.has_add_permission(request) or self.has_change_permission(request)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        return fields if self.shares_links(request) else [f for f in fields if f != "token"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        link = request.build_absolute_uri(obj.link_path())
        self.message_user(request, f"Invite link (send it to the person; it works once): {link}")
        return super().response_add(request, obj, post_url_continue)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and self.shares_links(request):
            context["invite_link"] = request.build_absolute_uri(obj.link_path())
        return super().render_change_form(request, context, add, change, form_url, obj)


class ShareViewInline(admin.TabularInline):
    model = ShareView
    fields = ("viewer", "first_seen", "last_seen", "count")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "opened by"

    def has_view_permission(self, request, obj=None) -> bool:
        # Part of the share, not a model of its own in the admin: whoever may see shares sees this.
        return request.user.has_perm("chat.view_share") or request.user.has_perm("chat.change_share")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ShareStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("live", "live"), ("revoked", "revoked")]

    def queryset(self, request, queryset):
        if self.value() in ("live", "revoked"):
            return queryset.filter(revoked_at__isnull=self.value() == "live")
        return queryset


@admin.register(Share)
class ShareAdmin(ChatAdmin):
    """Shared links (issue #15): who shared which conversation, who opened it; staff who may
    change shares revoke them. The link itself is never shown, nor any of the conversation's
    text: with it, staff could read a conversation the transcript's audit trail never sees."""

    list_display = ("__str__", "owner", "conversation_ref", "status", "opened_by", "created_at", "revoked_at")
    list_select_related = ("conversation__user", "revoked_by")
    list_filter = (ShareStatusFilter, "created_at", "show_system_prompt")
    search_fields = ("conversation__user__username", "=conversation__id")
    fields = (
        "conversation_ref",
        "owner",
        "created_by",
        "created_at",
        "show_system_prompt",
        "status",
        "revoked_at",
        "revoked_by",
    )
    readonly_fields = fields
    inlines = [ShareViewInline]
    actions = ["revoke"]
    show_full_result_count = False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(viewer_count=Count("views"))

    def has_add_permission(self, request) -> bool:
        return False  # made by a conversation's owner, on the chat page

    @admin.display(description="owner", ordering="conversation__user__username")
    def owner(self, obj):
        return obj.conversation.user

    @admin.display(description="conversation", ordering="conversation_id")
    def conversation_ref(self, obj):
        return obj.conversation_id

    @admin.display(description="opened by", ordering="viewer_count")
    def opened_by(self, obj):
        count = getattr(obj, "viewer_count", None)
        return obj.views.count() if count is None else count

    @admin.action(description="Revoke the selected links", permissions=["change"])
    def revoke(self, request, queryset):
        ended = shares.revoke(queryset, request.user)
        self.message_user(request, f"{ended} link{'s' if ended != 1 else ''} revoked.")

import secrets
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.signals import setting_changed
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import LazyObject, empty


class Provider(models.Model):
    """An OpenAI-compatible server. The environment's OPENAI_* settings are a provider too,
    used when no model here is chosen or marked default."""

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(help_text="Ends in /v1, e.g. http://localhost:11434/v1")
    api_key = models.CharField(max_length=500, blank=True, help_text="Stored here; never shown again.")
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="Or: the name of an environment variable holding the key; it must start with CHAT_PROVIDER_KEY_.",
    )
    extra_headers = models.JSONField(default=dict, blank=True, help_text='e.g. {"HTTP-Referer": "https://…"}')
    enabled = models.BooleanField(default=True)

    def __str__(self) -> str:
        return self.name

    def key(self) -> str:
        import os

        if not self.api_key_env:
            return self.api_key
        # Checked here as well as in the admin form, so a row saved before the rule (or by
        # other code) cannot read DJANGO_SECRET_KEY or DATABASE_URL either (issue #12).
        return os.environ.get(self.api_key_env, "") if key_env_allowed(self.api_key_env) else ""


# Staff who may change providers choose both the server and the variable its key is read
# from, so any variable they may name can be sent to a server of theirs: only variables the
# operator named for that purpose qualify.
KEY_ENV_PREFIX = "CHAT_PROVIDER_KEY_"


def key_env_allowed(name: str) -> bool:
    return name.startswith(KEY_ENV_PREFIX) and len(name) > len(KEY_ENV_PREFIX)


class ChatModel(models.Model):
    class ApiStyle(models.TextChoices):
        CHAT = "chat", "chat (/chat/completions)"
        COMPLETIONS = "completions", "legacy completions (/completions)"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=200, help_text="The provider's model id, e.g. gpt-4o-mini")
    display_name = models.CharField(max_length=200, blank=True)
    encoding = models.CharField(
        max_length=50,
        blank=True,
        help_text="tiktoken encoding; blank: tiktoken's choice, else CHAT_TOKEN_ENCODING",
    )
    context_window = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens; history beyond it is trimmed, oldest first."
    )
    max_reply_tokens = models.PositiveIntegerField(
        default=1024, help_text="Room kept in the context window for the reply when trimming."
    )
    stream = models.BooleanField(default=True, help_text="Off for servers that cannot stream.")
    include_usage = models.BooleanField(default=True, help_text="Ask for stream_options.include_usage.")
    api_style = models.CharField(max_length=16, choices=ApiStyle.choices, default=ApiStyle.CHAT)
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="Used by conversations that chose no model.")
    accepts_images = models.BooleanField(
        default=False,
        help_text="The model reads images (sent as image_url parts); "
        "images sent to other models are refused before anything is written.",
    )

    class Meta:
        ordering = ["provider__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="one_model_name_per_provider")
        ]

    def __str__(self) -> str:
        return self.display_name or self.name


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user):
        """Conversations the given user owns; every page and socket goes through this."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(user=user)


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True, help_text="Blank: the site's default model.")
    system_prompt = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class MessageQuerySet(models.QuerySet):
    def current(self):
        """The conversation as it stands: its current branch, other versions left out."""
        return self.filter(superseded=False)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        FINISHED = "finished"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # The message before this one on its branch (issue #14): messages form a tree, and the
    # children of one parent are versions of each other (an edited message and the one it
    # replaced; a reply and its regenerations). Null for a conversation's first messages,
    # and for earlier versions saved before the tree existed whose place is not known.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children", editable=False
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    # Tokens of this message's content alone (tiktoken). Null: the vocabulary could
    # not be loaded, so the count is unknown rather than wrong.
    token_count = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # A running total, so a prompt's count is not a sum over the whole history each turn:
    # the tokens (framing included) and the number of the conversation's messages before
    # this one, as they stood when it was written. They count the message's ancestors
    # (the branch above it), which never change, so these stay true whichever branch is
    # shown; null on rows from before they existed, and a count is then summed
    # (chat.replies._tally).
    tokens_before = models.PositiveIntegerField(null=True, blank=True, editable=False)
    messages_before = models.PositiveIntegerField(null=True, blank=True, editable=False)
    # How many files were sent with it (user messages; chat.attachments), written with the
    # row, so a prompt's history knows which messages to read files for without a query.
    attachment_count = models.PositiveSmallIntegerField(default=0, editable=False)

    # Assistant replies only.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FINISHED)
    superseded = models.BooleanField(
        default=False,
        help_text="Not on the conversation's current branch: another version of it (or of a message "
        "before it) is shown.",
    )
    model = models.CharField(max_length=200, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage = models.JSONField(null=True, blank=True, help_text="Usage as the upstream reported it.")
    reasoning = models.TextField(blank=True)
    refusal = models.TextField(blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)
    ttft_ms = models.FloatField(null=True, blank=True, verbose_name="time to first token (ms)")
    duration_ms = models.FloatField(null=True, blank=True)
    seq = models.PositiveIntegerField(default=0, help_text="Last delta persisted while streaming.")
    lease_until = models.DateTimeField(null=True, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            # One reply at a time per conversation, across every worker process.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status="streaming"),
                name="one_streaming_reply_per_conversation",
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "id"], name="message_history"),
            models.Index(fields=["status", "lease_until"], name="message_lease"),
        ]

    def __str__(self) -> str:
        # No text here: a message's name shows in admin lists, history, delete confirmations
        # and the log of admin actions, none of which is an audited read (issue #12).
        return f"{self.role} message {self.pk}"

    @property
    def upstream_prompt_tokens(self) -> int | None:
        return (self.usage or {}).get("prompt_tokens")

    @property
    def upstream_completion_tokens(self) -> int | None:
        return (self.usage or {}).get("completion_tokens")


class TranscriptAccess(models.Model):
    """Which staff member opened or exported which conversation, and when (audit trail)."""

    class Kind(models.TextChoices):
        VIEW = "view"
        EXPORT = "export"
        SEARCH = "search"  # a search of message text showed this conversation's messages
        DOWNLOAD = "download"  # a file attached to one of its messages (query: which)

    staff = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    staff_username = models.CharField(max_length=150)
    conversation = models.ForeignKey(Conversation, on_delete=models.SET_NULL, null=True, related_name="+")
    conversation_ref = models.PositiveBigIntegerField(help_text="The conversation's id, kept after deletion.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    query = models.TextField(
        blank=True, help_text="What was searched for (searches); the attachment downloaded (downloads)."
    )
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at"]
        verbose_name_plural = "transcript accesses"

    def __str__(self) -> str:
        return f"{self.staff_username} {self.kind} conversation {self.conversation_ref} at {self.at:%Y-%m-%d %H:%M}"


class Budget(models.Model):
    """Token and send limits for one user, or for everyone in a group.

    A user's own budget wins; otherwise the most generous of their groups' budgets
    applies. Blank means unlimited.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="chat_budget"
    )
    group = models.OneToOneField(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="chat_budget"
    )
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_month = models.PositiveIntegerField(null=True, blank=True)
    sends_per_minute = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, group__isnull=True)
                | Q(user__isnull=True, group__isnull=False),
                name="budget_for_a_user_or_a_group",
            )
        ]

    def __str__(self) -> str:
        return f"Budget for {self.user or self.group}"


INVITE_DAYS = 7


def new_invite_token() -> str:
    return secrets.token_urlsafe(32)


def invite_expiry():
    return timezone.now() + timedelta(days=INVITE_DAYS)


class InviteQuerySet(models.QuerySet):
    def usable(self):
        """Invites nobody has used yet and that have not expired."""
        return self.filter(used_at__isnull=True, expires_at__gt=timezone.now())


class Invite(models.Model):
    """A one-time link that lets its holder choose a username and password.

    The link is the credential: whoever has it may sign up once, before it expires.
    The email is a note for staff (and becomes the new account's address), not a check.
    """

    token = models.CharField(max_length=64, unique=True, default=new_invite_token, editable=False)
    email = models.EmailField(
        blank=True, help_text="Optional: who it is for. The link works for whoever has it."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(default=invite_expiry)
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    used_at = models.DateTimeField(null=True, blank=True)

    objects = InviteQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Invite for {self.email}" if self.email else f"Invite {self.token[:8]}…"

    def link_path(self) -> str:
        """The sign-up link. Not get_absolute_url: the admin's "view on site" redirect
        (/admin/r/…) would hand it to any staff member, whatever their permissions."""
        return reverse("chat_accounts:invite", args=[self.token])

    @property
    def status(self) -> str:
        if self.used_at is not None:
            return "used"
        if self.expires_at <= timezone.now():
            return "expired"
        return "open"


def new_share_token() -> str:
    return secrets.token_urlsafe(32)


class ShareQuerySet(models.QuerySet):
    def live(self):
        """Shares not revoked: their links open the conversation for any signed-in user."""
        return self.filter(revoked_at__isnull=True)


class Share(models.Model):
    """A read-only link to a conversation for the signed-in users of this site (issue #15).

    The token is the link: whoever signed in holds it sees the conversation as it stands
    when they open it. A conversation has at most one live link; revoking it ends it for good
    (a new link gets a new token), so a copy passed on never opens again.
    """

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    token = models.CharField(max_length=64, unique=True, default=new_share_token, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    show_system_prompt = models.BooleanField(
        default=False, help_text="The link shows the chat's system prompt and model too."
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = ShareQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(revoked_at__isnull=True),
                name="one_live_share_per_conversation",
            )
        ]

    def __str__(self) -> str:
        # No title: it is the conversation's first words when the owner did not choose one.
        return f"Share {self.pk} of conversation {self.conversation_id}"

    def link_path(self) -> str:
        """Not get_absolute_url: the admin's "view on site" would hand the link to any staff member."""
        return reverse("chat:shared", args=[self.token])

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at else "live"


class ShareView(models.Model):
    """Who opened a shared link: one row per person and link, counted, not one per visit."""

    share = models.ForeignKey(Share, on_delete=models.CASCADE, related_name="views")
    viewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    count = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["-last_seen"]
        constraints = [models.UniqueConstraint(fields=["share", "viewer"], name="one_view_row_per_viewer")]

    def __str__(self) -> str:
        return f"{self.viewer} opened share {self.share_id}"


class ImageTokenRule(models.Model):
    """How many prompt tokens an image costs the models a pattern names (issue #16), after
    the provider's published rule; read by chat/image_tokens.py. Seeded from OpenAI's vision
    guide; staff add a row when a provider publishes constants for a new model."""

    class Method(models.TextChoices):
        TILE = "tile", "tiles (base + tokens per 512 px tile)"
        PATCH = "patch", "patches (32 px patches × multiplier)"

    pattern = models.CharField(
        max_length=200,
        unique=True,
        help_text="A model name, or a pattern where * stands for any characters (gpt-4o* also "
        "covers gpt-4o-2024-08-06). The most specific matching pattern wins: an exact name, "
        "then the pattern with the most fixed characters.",
    )
    method = models.CharField(max_length=8, choices=Method.choices)
    base_tokens = models.PositiveIntegerField(
        default=0, help_text="Tiles: added to every image; all a low-detail image costs."
    )
    tokens_per_tile = models.PositiveIntegerField(default=0, help_text="Tiles: per 512 px tile.")
    patch_multiplier = models.DecimalField(
        max_digits=6,
        decimal_places=3,
        default=1,
        validators=[MinValueValidator(Decimal("0.001"))],
        help_text="Patches: tokens per 32 px patch (the model's published multiplier).",
    )
    patch_cap = models.PositiveIntegerField(
        default=1536, help_text="Patches: larger images are scaled down to fit this many patches."
    )
    priority = models.IntegerField(
        default=0, help_text="Between equally specific patterns that both match, the higher wins."
    )
    source = models.URLField(max_length=300, blank=True, help_text="Where the constants are published.")

    class Meta:
        ordering = ["pattern"]
        constraints = [
            models.CheckConstraint(condition=Q(method__in=["tile", "patch"]), name="image_rule_method"),
            models.CheckConstraint(
                condition=Q(patch_multiplier__gt=0), name="image_rule_multiplier_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.pattern

    def clean(self) -> None:
        self.pattern = self.pattern.strip()
        if not self.pattern.replace("*", ""):
            raise ValidationError({"pattern": "Name at least one character of the model, e.g. gpt-4o*."})
        if any(c.isspace() for c in self.pattern):
            raise ValidationError({"pattern": "Model names have no spaces."})
        if self.method == self.Method.TILE and not (self.base_tokens or self.tokens_per_tile):
            raise ValidationError("A tile rule needs base tokens or tokens per tile.")
        if self.method == self.Method.PATCH and self.patch_cap < 1:
            raise ValidationError({"patch_cap": "At least one patch."})


class _AttachmentStorage(LazyObject):
    """STORAGES["chat_attachments"] (chatsite/settings.py), looked up on first use rather
    than when models load, and again after the setting changes (tests)."""

    def _setup(self) -> None:
        from django.core.files.storage import storages

        self._wrapped = storages["chat_attachments"]


_attachment_storage = _AttachmentStorage()


@receiver(setting_changed)
def _storages_changed(setting: str, **kwargs) -> None:
    if setting == "STORAGES":
        _attachment_storage._wrapped = empty


def attachment_storage():
    """The storage attached files live in: never a static or public path."""
    return _attachment_storage


class AttachmentQuerySet(models.QuerySet):
    def unsent(self):
        """Uploaded but not sent with a message yet: the owner may still remove them."""
        return self.filter(message__isnull=True)


class Attachment(models.Model):
    """A file a user attached to a message (issue #16): its bytes in storage, what was read
    from them here. Uploaded first (message null), then tied to the user message it was sent
    with, in the transaction that writes that message."""

    class Kind(models.TextChoices):
        TEXT = "text"
        PDF = "pdf"
        IMAGE = "image"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="attachments"
    )
    name = models.CharField(max_length=255, help_text="The file's name as uploaded (shown, never trusted).")
    file = models.FileField(storage=attachment_storage, max_length=300, editable=False)
    size = models.PositiveBigIntegerField(help_text="Bytes stored (after an image was downscaled).")
    # Sniffed from the bytes, never taken from the browser or the name.
    content_type = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    text = models.TextField(blank=True, help_text="The text sent to the model (text files and PDFs).")
    # What this file costs in a prompt, for `counted_for` (the model it was last counted
    # for): its delimited text, or the image by the model's published formula. Null: unknown.
    token_count = models.PositiveIntegerField(null=True, blank=True)
    counted_for = models.CharField(max_length=200, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AttachmentQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        # The name can say what is in the file; the admin lists it by number only.
        return f"attachment {self.pk}"

    def download_path(self) -> str:
        return reverse("chat:attachment", args=[self.pk])

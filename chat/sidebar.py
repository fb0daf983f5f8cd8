"""The list of a user's chats beside the page: which conversations, and how each is described
to the page. The server renders it once; static/chat/sidebar.js asks the list endpoint again
as the user types a search, and groups both by date in the browser's own time zone."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from django.urls import reverse

from chat.models import Conversation

LIMIT = 200


def conversations(user: AbstractBaseUser, query: str = "") -> list[Conversation]:
    """The user's conversations, most recently active first, narrowed by `query` over titles
    and message text (case-insensitive)."""
    found = Conversation.objects.for_user(user).order_by("-updated_at", "-id")
    if query:
        found = found.filter(Q(title__icontains=query) | Q(messages__content__icontains=query)).distinct()
    return list(found.only("id", "title", "updated_at")[:LIMIT])


def item(conversation: Conversation) -> dict:
    """One chat as the sidebar shows it. `updated_at` is ISO 8601 with its offset: the page
    decides "Today" or "Yesterday" in the visitor's time zone, which the server does not know."""
    pk = conversation.pk
    return {
        "id": pk,
        "title": conversation.title,
        "updated_at": conversation.updated_at.isoformat(),
        "url": reverse("chat:conversation", args=[pk]),
        "rename_url": reverse("chat:rename", args=[pk]),
        "delete_url": reverse("chat:delete", args=[pk]),
        "export_md_url": reverse("chat:export_md", args=[pk]),
        "export_json_url": reverse("chat:export_json", args=[pk]),
    }


# What the page's <template> for a new sidebar entry is rendered from.
BLANK_ITEM = dict.fromkeys(
    ("id", "title", "updated_at", "url", "rename_url", "delete_url", "export_md_url", "export_json_url"), ""
)

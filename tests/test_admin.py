"""Staff review in the Django admin."""

import csv
import io
import json

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from chat.models import Conversation, Message, TranscriptAccess

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"> [click](javascript:alert(3))'


@pytest.fixture
def staff(db):
    return User.objects.create_superuser("charlie", password="x")


@pytest.fixture
def conversation(db):
    alice = User.objects.create_user("alice", password="x")
    conversation = Conversation.objects.create(user=alice, title="Alice's chat", model="gpt-4o-mini")
    Message.objects.create(conversation=conversation, role="user", content="Question", token_count=1)
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content=HOSTILE + "\n\n**bold**",
        token_count=30,
        prompt_tokens=10,
        completion_tokens=30,
        finish_reason="stop",
        model="gpt-4o-mini",
        usage={"prompt_tokens": 10, "completion_tokens": 31},
        ttft_ms=120.5,
        duration_ms=900.0,
    )
    return conversation


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def test_the_list_shows_counts_and_token_totals_in_a_fixed_number_of_queries(
    staff_client, conversation, django_assert_max_num_queries
):
    for n in range(20):
        other = Conversation.objects.create(user=conversation.user, title=f"chat {n}")
        Message.objects.create(conversation=other, role="user", content="hi", token_count=1)
    with django_assert_max_num_queries(8):
        response = staff_client.get(reverse("admin:chat_conversation_changelist"))
    assert response.status_code == 200
    row = next(r for r in response.context["cl"].result_list if r.pk == conversation.pk)
    assert (row.message_count, row.prompt_total, row.completion_total) == (2, 10, 30)


def test_message_search_finds_content_and_links_to_the_transcript(staff_client, conversation):
    response = staff_client.get(reverse("admin:chat_message_changelist"), {"q": "bold"})
    found = response.context["cl"].result_list
    assert [m.role for m in found] == ["assistant"] and found[0].conversation == conversation
    transcript = reverse("admin:chat_conversation_transcript", args=[conversation.pk])
    assert f'href="{transcript}#message-{found[0].pk}"' in response.content.decode()


def test_conversation_search_finds_titles_and_owners(staff_client, conversation):
    for query in ("Alice's", "alice"):
        response = staff_client.get(reverse("admin:chat_conversation_changelist"), {"q": query})
        assert [c.pk for c in response.context["cl"].result_list] == [conversation.pk]


def test_message_filters_are_fixed_choices(staff_client, conversation):
    response = staff_client.get(
        reverse("admin:chat_message_changelist"), {"finish_reason": "stop", "has_error": "no"}
    )
    assert [m.finish_reason for m in response.context["cl"].result_list] == ["stop"]


def test_the_transcript_is_readable_inert_and_audited(staff_client, staff, conversation):
    response = staff_client.get(reverse("admin:chat_conversation_transcript", args=[conversation.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<strong>bold</strong>" in html
    assert "<script>alert" not in html and "<img" not in html and 'href="javascript:' not in html
    assert "&lt;script&gt;alert(1)" in html  # shown as text, not run
    assert html.count("Question") == 1  # the transcript is not echoed into the admin's message list
    assert "first token 120 ms" in html or "first token 121 ms" in html
    access = TranscriptAccess.objects.get()
    assert (access.staff, access.conversation_ref, access.kind) == (staff, conversation.pk, "view")


def test_opening_the_change_page_is_audited_and_messages_are_read_only(staff_client, conversation):
    response = staff_client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    assert response.status_code == 200
    assert TranscriptAccess.objects.filter(kind="view", conversation=conversation).count() == 1
    message = conversation.messages.last()
    response = staff_client.post(
        reverse("admin:chat_message_change", args=[message.pk]), {"content": "edited"}
    )
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.content.startswith("<script>")


def test_staff_export_markdown_and_json(staff_client, conversation):
    md = staff_client.get(reverse("admin:chat_conversation_export_md", args=[conversation.pk]))
    assert md["Content-Disposition"].endswith(f'conversation-{conversation.pk}.md"')
    assert "## User\n\nQuestion" in md.content.decode()
    data = json.loads(
        staff_client.get(reverse("admin:chat_conversation_export_json", args=[conversation.pk])).content
    )
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["completion_tokens"] == 30
    assert TranscriptAccess.objects.filter(kind="export").count() == 2


def test_usage_by_user_model_and_day_flags_provider_mismatches(staff_client, conversation):
    response = staff_client.get(reverse("admin:chat_message_usage"), {"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 1
    row = rows[0]
    assert (row["user"], row["model"], row["prompt_tokens"], row["completion_tokens"]) == (
        "alice",
        "gpt-4o-mini",
        "10",
        "30",
    )
    assert (row["upstream_completion_tokens"], row["mismatch"]) == ("31", "True")
    assert staff_client.get(reverse("admin:chat_message_usage")).status_code == 200


def test_non_staff_cannot_open_transcripts_or_exports(client, conversation):
    client.force_login(conversation.user)
    for name in ("admin:chat_conversation_transcript", "admin:chat_conversation_export_json"):
        response = client.get(reverse(name, args=[conversation.pk]))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not TranscriptAccess.objects.exists()

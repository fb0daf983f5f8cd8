"""Shared links (issue #15): the owner makes, changes and revokes a read-only link to a chat;
anyone signed in opens it and is counted; nobody else makes, changes or reads the owner's."""

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, Message, Share, ShareView
from tests.test_views import assert_inert

pytestmark = pytest.mark.django_db

JSON = {"HTTP_ACCEPT": "application/json"}
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"> [click](javascript:alert(3))'


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob")


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice")


@pytest.fixture
def bobs_chat(bob) -> Conversation:
    chat = Conversation.objects.create(
        user=bob, title="Trip plan", model="gpt-4o-mini", system_prompt="You are Bob's secret planner."
    )
    question = Message.objects.create(conversation=chat, role="user", content="Where to in May?")
    Message.objects.create(
        conversation=chat, role="assistant", content="An earlier answer", superseded=True, parent=question
    )
    Message.objects.create(
        conversation=chat, role="assistant", content="**Lisbon**, then Porto.\n\n" + HOSTILE, parent=question
    )
    return chat


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_link(client: Client, chat: Conversation, **fields) -> dict:
    response = client.post(reverse("chat:share", args=[chat.pk]), fields, **JSON)
    assert response.status_code == 200, response.content
    return response.json()


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def test_the_owner_makes_a_link_once_and_it_opens_for_another_user(bob, alice, bobs_chat):
    owner = client_for(bob)
    assert owner.get(reverse("chat:share", args=[bobs_chat.pk])).json()["share"] is None
    made = make_link(owner, bobs_chat)
    assert made["share"]["url"].startswith("http://testserver/s/")
    assert made["share"]["show_system_prompt"] is False
    again = make_link(owner, bobs_chat)  # a second click, or another tab: the same link
    assert again["share"]["url"] == made["share"]["url"]
    assert Share.objects.count() == 1
    token = Share.objects.get().token
    assert len(token) >= 40  # 32 random bytes

    page = client_for(alice).get(path_of(made["share"]["url"]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Where to in May?" in html
    assert "<strong>Lisbon</strong>" in html  # rendered as the chat page renders replies
    assert "An earlier answer" not in html  # the current branch only
    assert_inert(html.split('<div class="messages"', 1)[1])  # model output stays inert
    assert 'id="composer"' not in html and "chat.js" not in html  # read-only: no composer, no socket
    assert "Shared by bob" in html
    assert page["Cache-Control"] == "private, no-store"


def test_the_system_prompt_and_model_show_only_when_the_owner_chooses(bob, alice, bobs_chat):
    owner, reader = client_for(bob), client_for(alice)
    link = path_of(make_link(owner, bobs_chat)["share"]["url"])
    html = reader.get(link).content.decode()
    assert "secret planner" not in html
    assert "gpt-4o-mini" not in html

    shown = make_link(owner, bobs_chat, show_system_prompt="on")
    assert shown["share"]["show_system_prompt"] is True
    assert path_of(shown["share"]["url"]) == link  # the same link, now showing more
    html = reader.get(link).content.decode()
    assert "secret planner" in html and "gpt-4o-mini" in html

    make_link(owner, bobs_chat)  # the box unticked again
    assert "secret planner" not in reader.get(link).content.decode()


def test_a_bad_choice_is_refused_with_a_clear_error(bob, bobs_chat):
    response = client_for(bob).post(
        reverse("chat:share", args=[bobs_chat.pk]), {"show_system_prompt": "maybe"}, **JSON
    )
    assert response.status_code == 400
    assert "on or off" in response.json()["errors"]["show_system_prompt"][0]["message"]
    assert not Share.objects.exists()


def test_the_shared_page_shows_nothing_else_of_the_owners(bob, alice, bobs_chat):
    Conversation.objects.create(user=bob, title="Bob's other chat")
    link = path_of(make_link(client_for(bob), bobs_chat)["share"]["url"])
    html = client_for(alice).get(link).content.decode()
    assert "Bob's other chat" not in html
    assert reverse("chat:conversation", args=[bobs_chat.pk]) not in html  # no way into the owner's page


def test_who_opened_it_is_counted_and_shown_to_the_owner(bob, alice, bobs_chat):
    carol = User.objects.create_user("carol")
    owner = client_for(bob)
    link = path_of(make_link(owner, bobs_chat)["share"]["url"])
    for _ in range(3):
        assert client_for(alice).get(link).status_code == 200
    client_for(carol).get(link)
    owner.get(link)  # the owner checking the link is not a reader

    viewers = owner.get(reverse("chat:share", args=[bobs_chat.pk])).json()["viewers"]
    assert {v["username"]: v["count"] for v in viewers} == {"alice": 3, "carol": 1}
    assert viewers[0]["username"] == "carol"  # the latest first
    row = ShareView.objects.get(viewer=alice)
    assert row.first_seen <= row.last_seen


def test_signed_out_visitors_are_sent_to_sign_in(bob, bobs_chat):
    link = path_of(make_link(client_for(bob), bobs_chat)["share"]["url"])
    response = Client().get(link)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")
    assert not ShareView.objects.exists()


def test_a_revoked_link_is_a_404_like_one_that_never_existed(bob, alice, bobs_chat):
    owner, reader = client_for(bob), client_for(alice)
    link = path_of(make_link(owner, bobs_chat)["share"]["url"])
    reader.get(link)
    revoked = owner.post(reverse("chat:share_revoke", args=[bobs_chat.pk]), **JSON).json()
    assert revoked["share"] is None
    assert [v["username"] for v in revoked["viewers"]] == ["alice"]  # who read it stays known
    assert revoked["viewers"][0]["revoked"] is True

    gone = reader.get(link)
    never = reader.get(reverse("chat:shared", args=["x" * 43]))
    assert gone.status_code == never.status_code == 404
    assert gone.content == never.content
    assert owner.get(link).status_code == 404  # for the owner too

    fresh = path_of(make_link(owner, bobs_chat)["share"]["url"])  # a new link, never the old one
    assert fresh != link
    assert reader.get(link).status_code == 404
    assert reader.get(fresh).status_code == 200


def test_without_javascript_the_forms_lead_back_to_the_chat(bob, bobs_chat):
    owner = client_for(bob)
    made = owner.post(reverse("chat:share", args=[bobs_chat.pk]))
    assert made.status_code == 302 and made["Location"] == reverse("chat:conversation", args=[bobs_chat.pk])
    assert Share.objects.live().count() == 1
    owner.post(reverse("chat:share_revoke", args=[bobs_chat.pk]))
    assert Share.objects.live().count() == 0


def test_the_chat_page_offers_sharing_in_its_menu(bob, bobs_chat):
    html = client_for(bob).get(reverse("chat:conversation", args=[bobs_chat.pk])).content.decode()
    assert 'data-testid="share"' in html and 'id="share-dialog"' in html
    assert reverse("chat:share", args=[bobs_chat.pk]) in html


def test_deleting_the_chat_ends_its_links(bob, alice, bobs_chat):
    owner = client_for(bob)
    link = path_of(make_link(owner, bobs_chat)["share"]["url"])
    owner.post(reverse("chat:delete", args=[bobs_chat.pk]))
    assert client_for(alice).get(link).status_code == 404
    assert not Share.objects.exists()


def test_a_reply_still_being_written_says_so(bob, alice, bobs_chat):
    """The page is a snapshot (no socket): a reply streaming when it was opened is marked."""
    Message.objects.create(conversation=bobs_chat, role="user", content="And in June?")
    Message.objects.create(conversation=bobs_chat, role="assistant", content="Maybe Mad", status="streaming")
    link = path_of(make_link(client_for(bob), bobs_chat)["share"]["url"])
    html = client_for(alice).get(link).content.decode()
    assert "Maybe Mad" in html
    assert "Still being written: reload for more." in html
    assert "Waiting for first token" not in html

"""Headers on every response (chat/headers.py): a Content-Security-Policy on pages, no
caching of what a signed-in user sees, HSTS when the operator asks for it."""

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password="alice-password-1", is_staff=True, is_superuser=True)


@pytest.fixture
def chat(alice) -> Conversation:
    chat = Conversation.objects.create(user=alice, title="Plans")
    Message.objects.create(conversation=chat, role="user", content="private question")
    return chat


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def test_pages_run_only_the_sites_own_scripts(client, alice, chat):
    client.force_login(alice)
    for url in (reverse("chat:conversation", args=[chat.pk]), reverse("login"), "/admin/"):
        response = client.get(url)
        assert response.status_code == 200, url
        policy = directives(response)
        assert policy["script-src"] == ["'self'"], url
        assert policy["default-src"] == ["'self'"]
        assert policy["style-src"] == ["'self'"]  # no injected <style>; attributes: see style-src-attr
        assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"] and policy["form-action"] == ["'self'"]
        # The page's own socket, named outright for browsers whose 'self' does not cover ws:.
        assert policy["connect-src"] == ["'self'", "ws://testserver"]


def test_the_page_has_no_inline_script_for_the_policy_to_block(client, alice, chat):
    client.force_login(alice)
    body = client.get(reverse("chat:conversation", args=[chat.pk])).content.decode()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", body, re.S)
    assert scripts
    for attributes, text in scripts:
        assert 'src="' in attributes or 'type="application/json"' in attributes, attributes
        assert "src=" not in attributes or not text.strip()
    assert not re.search(r"\son[a-z]+=", body)  # no inline event handlers either


def test_behind_https_the_socket_source_is_wss(client, alice, chat, settings):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    client.force_login(alice)
    response = client.get(
        reverse("chat:conversation", args=[chat.pk]),
        headers={"x-forwarded-proto": "https", "host": "chat.example.com"},
    )
    assert directives(response)["connect-src"] == ["'self'", "wss://chat.example.com"]


def test_nothing_a_signed_in_user_sees_is_stored_by_caches(client, alice, chat):
    client.force_login(alice)
    for url in (
        reverse("chat:conversation", args=[chat.pk]),
        reverse("chat:export_md", args=[chat.pk]),
        reverse("chat:export_json", args=[chat.pk]),
        reverse("chat:messages", args=[chat.pk]),
        reverse("admin:chat_conversation_change", args=[chat.pk]),
        reverse("admin:chat_conversation_export_md", args=[chat.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "no-store" in response["Cache-Control"], url
        assert "private" in response["Cache-Control"], url


def test_static_files_keep_their_own_caching(client, alice):
    client.force_login(alice)
    response = client.get("/static/chat/chat.js")
    assert response.status_code == 200
    assert "no-store" not in response.get("Cache-Control", "")
    assert "Content-Security-Policy" not in response


def test_hsts_is_off_unless_the_operator_sets_it(settings):
    secure = {"x-forwarded-proto": "https"}
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert "Strict-Transport-Security" not in Client().get(reverse("login"), headers=secure)
    settings.SECURE_HSTS_SECONDS = 31536000  # DJANGO_HSTS_SECONDS; read when the middleware starts
    client = Client()
    response = client.get(reverse("login"), headers=secure)
    assert response["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in client.get(reverse("login"))  # never over plain HTTP


def test_pages_style_themselves_from_files_the_policy_allows(client, alice, chat):
    """style-src 'self' refuses <style> elements: a page that had one lost its layout."""
    client.force_login(alice)
    for url in (
        reverse("chat:conversation", args=[chat.pk]),
        reverse("admin:chat_conversation_change", args=[chat.pk]),
        reverse("admin:chat_message_usage"),
        "/admin/",
    ):
        body = client.get(url).content.decode()
        assert "<style" not in body, url
    transcript = client.get(reverse("admin:chat_conversation_change", args=[chat.pk])).content.decode()
    assert "chat/transcript.css" in transcript

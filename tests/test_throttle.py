"""Abuse limits: sign-in lockout (django-axes), sign-up and password-reset limits (chat/throttle.py).

Through the real views (the site's and the admin's), as a browser posts them.
"""

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from chat.models import Invite

pytestmark = pytest.mark.django_db

GOOD_PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", email="alice@example.com", password="alice-password-1")


@pytest.fixture
def charlie() -> User:
    return User.objects.create_superuser("charlie", password="charlie-password-1")


def signed_in(client: Client) -> bool:
    return client.get("/").status_code == 200


def sign_in(client: Client, username: str, password: str, url="/accounts/login/", **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


# -- sign-in ------------------------------------------------------------------------------------
def test_five_wrong_passwords_lock_the_sign_in_even_with_the_right_one(client, alice, settings):
    assert settings.CHAT_LOGIN_FAILURE_LIMIT == 5
    for _ in range(4):
        assert sign_in(client, "alice", "guess").status_code == 200  # the form again, with its error
    assert sign_in(client, "alice", "guess").status_code == 429  # the fifth locks
    response = sign_in(client, "alice", "alice-password-1")
    assert response.status_code == 429
    body = response.content.decode()
    assert "Too many sign-in attempts" in body and "Try again in" in body
    assert not signed_in(client)


def test_fewer_wrong_passwords_than_the_limit_still_sign_in_and_start_the_count_again(client, alice):
    for _ in range(4):
        sign_in(client, "alice", "guess")
    assert sign_in(client, "alice", "alice-password-1").status_code == 302
    assert signed_in(client)
    client.post("/accounts/logout/")
    for _ in range(4):  # the success cleared the earlier four
        sign_in(client, "alice", "guess")
    assert sign_in(client, "alice", "alice-password-1").status_code == 302


def test_a_lockout_is_per_address_so_it_cannot_lock_a_colleague_out(client, alice):
    for _ in range(5):
        sign_in(client, "alice", "guess", REMOTE_ADDR="203.0.113.9")
    elsewhere = Client(REMOTE_ADDR="198.51.100.7")
    assert sign_in(elsewhere, "alice", "alice-password-1").status_code == 302
    assert signed_in(elsewhere)


def test_the_admin_sign_in_locks_too(client, charlie):
    for _ in range(4):
        assert sign_in(client, "charlie", "guess", url="/admin/login/").status_code == 200
    assert sign_in(client, "charlie", "guess", url="/admin/login/").status_code == 429
    response = sign_in(client, "charlie", "charlie-password-1", url="/admin/login/")
    assert response.status_code == 429
    assert "Too many sign-in attempts" in response.content.decode()
    assert client.get("/admin/").status_code == 302  # still sent to the sign-in page


# -- sign-up ------------------------------------------------------------------------------------
def sign_up(client: Client, username: str, url="/accounts/signup/"):
    return client.post(url, {"username": username, "password1": GOOD_PASSWORD, "password2": GOOD_PASSWORD})


def test_open_sign_up_beyond_the_limit_is_refused_with_a_clear_page(settings):
    settings.CHAT_OPEN_SIGNUP = True
    settings.CHAT_SIGNUP_RATE = "3/h"
    for n in range(3):
        assert sign_up(Client(), f"user{n}").status_code == 302
    response = sign_up(Client(), "user3")
    assert response.status_code == 429
    assert "Sign-ups from here are limited to 3 an hour" in response.content.decode()
    assert not User.objects.filter(username="user3").exists()


def test_the_default_sign_up_limit_stops_a_burst_of_accounts(settings):
    settings.CHAT_OPEN_SIGNUP = True
    made = sum(sign_up(Client(), f"bot{n}").status_code == 302 for n in range(40))
    assert made == 10
    assert User.objects.filter(username__startswith="bot").count() == 10


def test_invite_sign_up_is_limited_per_invite_not_per_network(settings, charlie):
    settings.CHAT_SIGNUP_RATE = "3/h"
    hammered = Invite.objects.create(created_by=charlie)
    for _ in range(3):  # mismatched passwords: the form again
        client = Client()
        client.post(hammered.link_path(), {"username": "x", "password1": "a", "password2": "b"})
    response = sign_up(Client(), "dana", url=hammered.link_path())
    assert response.status_code == 429
    assert "Sign-ups with one invite" in response.content.decode()
    assert not User.objects.filter(username="dana").exists()
    # Colleagues on the same network, each with their own invite, still join.
    for n in range(4):
        own = Invite.objects.create(created_by=charlie)
        assert sign_up(Client(), f"colleague{n}", url=own.link_path()).status_code == 302


# -- password reset ---------------------------------------------------------------------------
def test_password_reset_requests_are_limited(client, alice, settings):
    settings.CHAT_PASSWORD_RESET_RATE = "2/h"
    for _ in range(2):
        assert client.post("/accounts/password_reset/", {"email": "alice@example.com"}).status_code == 302
    response = client.post("/accounts/password_reset/", {"email": "alice@example.com"})
    assert response.status_code == 429
    assert "Password-reset requests from here are limited to 2 an hour" in response.content.decode()
    assert len(mail.outbox) == 2


def test_one_inbox_is_not_flooded_from_many_addresses(alice, settings):
    settings.CHAT_PASSWORD_RESET_RATE = "2/h"
    for n in range(5):
        Client(REMOTE_ADDR=f"198.51.100.{n}").post(
            "/accounts/password_reset/", {"email": "alice@example.com"}
        )
    assert len(mail.outbox) == 2

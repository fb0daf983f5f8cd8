"""Accounts: invites (the default way in), optional open sign-up, sign in/out, password change."""

import io
from datetime import timedelta

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher, get_hashers
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.models import Invite

pytestmark = pytest.mark.django_db

GOOD_PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def charlie() -> User:
    return User.objects.create_superuser("charlie", password="charlie-password-1")


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def invite(charlie) -> Invite:
    return Invite.objects.create(email="dana@example.com", created_by=charlie)


def join(client: Client, invite: Invite, username="dana", password=GOOD_PASSWORD, confirm=None):
    return client.post(
        invite.link_path(),
        {"username": username, "password1": password, "password2": confirm or password},
    )


# --- invites -----------------------------------------------------------------------------------


def test_it_makes_invites_with_unguessable_tokens_that_expire_in_a_week(invite):
    other = Invite.objects.create()
    assert len(invite.token) >= 40 and invite.token != other.token
    assert timedelta(days=6, hours=23) < invite.expires_at - timezone.now() <= timedelta(days=7)
    assert invite.link_path() == f"/accounts/invite/{invite.token}/"
    assert invite.status == "open"


def test_it_shows_the_invite_sign_up_form(client, invite):
    response = client.get(invite.link_path())
    assert response.status_code == 200
    body = response.content.decode()
    assert "You were invited as dana@example.com" in body
    for field in ("username", "password1", "password2"):
        assert f'name="{field}"' in body


def test_it_creates_the_account_signs_in_and_uses_up_the_invite(client, invite):
    response = join(client, invite)
    assert response["Location"] == reverse("chat:home")
    dana = User.objects.get(username="dana")
    assert dana.email == "dana@example.com"
    assert dana.check_password(GOOD_PASSWORD)
    assert not dana.is_staff and not dana.is_superuser
    invite.refresh_from_db()
    assert invite.used_by == dana and invite.used_at is not None and invite.status == "used"
    assert client.get(reverse("chat:home")).status_code == 200  # signed in


def test_it_applies_the_password_validators(client, invite):
    response = join(client, invite, password="12345678")
    assert response.status_code == 200
    body = response.content.decode()
    assert "This password is too common." in body
    assert "This password is entirely numeric." in body
    assert not User.objects.filter(username="dana").exists()
    invite.refresh_from_db()
    assert invite.status == "open"


def test_it_requires_matching_passwords(client, invite):
    response = join(client, invite, confirm=GOOD_PASSWORD + "x")
    assert "The two password fields didn’t match." in response.content.decode()
    assert not User.objects.filter(username="dana").exists()


def test_it_refuses_a_taken_username_whatever_its_case(client, invite, alice):
    response = join(client, invite, username="ALICE")
    assert "A user with that username already exists." in response.content.decode()
    assert User.objects.filter(username__iexact="alice").count() == 1
    invite.refresh_from_db()
    assert invite.status == "open"


def test_an_invite_works_once(client, invite):
    join(client, invite)
    second = Client()
    response = second.get(invite.link_path())
    assert response.status_code == 410
    assert "already been used" in response.content.decode()
    response = join(second, invite, username="eve")
    assert response.status_code == 410
    assert not User.objects.filter(username="eve").exists()


def test_an_invite_used_between_page_and_form_creates_no_account(client, invite, alice):
    page = client.get(invite.link_path())
    assert page.status_code == 200
    # Someone else wins the race after this page loaded but before the form arrives.
    Invite.objects.filter(pk=invite.pk).update(used_by=alice, used_at=timezone.now())
    response = join(client, invite)
    assert response.status_code == 410
    assert not User.objects.filter(username="dana").exists()


def test_an_expired_invite_says_so(client, invite):
    Invite.objects.filter(pk=invite.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    response = client.get(invite.link_path())
    assert response.status_code == 410
    assert "It expired on" in response.content.decode()
    assert join(client, invite).status_code == 410
    assert not User.objects.filter(username="dana").exists()


def test_an_unknown_invite_is_not_found(client):
    assert client.get(reverse("chat_accounts:invite", args=["not-a-real-token"])).status_code == 404


def test_a_signed_in_user_does_not_use_up_an_invite(client, invite, alice):
    client.force_login(alice)
    response = client.get(invite.link_path())
    assert "You're already signed in" in response.content.decode()
    join(client, invite)
    invite.refresh_from_db()
    assert invite.status == "open"
    assert not User.objects.filter(username="dana").exists()


# --- invites in the admin -----------------------------------------------------------------------


def test_staff_create_an_invite_and_see_its_link(client, charlie):
    client.force_login(charlie)
    form = client.get(reverse("admin:chat_invite_add")).content.decode()
    assert 'name="expires_at_0"' in form  # a week from now, filled in
    response = client.post(
        reverse("admin:chat_invite_add"),
        {"email": "erin@example.com", "expires_at_0": "2099-01-01", "expires_at_1": "12:00:00"},
        follow=True,
    )
    invite = Invite.objects.get(email="erin@example.com")
    link = f"http://testserver/accounts/invite/{invite.token}/"
    assert invite.created_by == charlie
    assert link in response.content.decode()  # the message after saving
    page = client.get(reverse("admin:chat_invite_change", args=[invite.pk])).content.decode()
    assert f'value="{link}"' in page
    assert 'name="token"' not in page  # shown, never editable


def test_the_admin_cannot_change_a_token(client, charlie, invite):
    client.force_login(charlie)
    token = invite.token
    client.post(
        reverse("admin:chat_invite_change", args=[invite.pk]),
        {
            "email": "dana@example.com",
            "token": "chosen-by-me",
            "expires_at_0": "2030-01-01",
            "expires_at_1": "00:00:00",
        },
    )
    invite.refresh_from_db()
    assert invite.token == token


# --- open sign-up ---------------------------------------------------------------------------------


def test_sign_up_is_invite_only_by_default(client, settings):
    assert settings.CHAT_OPEN_SIGNUP is False
    assert client.get("/accounts/signup/").status_code == 404
    response = client.post(
        "/accounts/signup/", {"username": "mallory", "password1": GOOD_PASSWORD, "password2": GOOD_PASSWORD}
    )
    assert response.status_code == 404
    assert not User.objects.filter(username="mallory").exists()


def test_the_login_page_says_to_ask_for_an_invite(client):
    body = client.get(reverse("login")).content.decode()
    assert "Ask your admin for an invite" in body
    assert "/accounts/signup/" not in body


def test_open_sign_up_creates_an_account_and_signs_in(client, settings):
    settings.CHAT_OPEN_SIGNUP = True
    login_page = client.get(reverse("login")).content.decode()
    assert 'href="/accounts/signup/"' in login_page
    assert "Ask your admin for an invite" not in login_page
    assert client.get("/accounts/signup/").status_code == 200
    response = client.post(
        "/accounts/signup/", {"username": "frank", "password1": GOOD_PASSWORD, "password2": GOOD_PASSWORD}
    )
    assert response["Location"] == reverse("chat:home")
    frank = User.objects.get(username="frank")
    assert not frank.is_staff
    assert client.get(reverse("chat:home")).status_code == 200


def test_open_sign_up_applies_the_password_validators(client, settings):
    settings.CHAT_OPEN_SIGNUP = True
    response = client.post(
        "/accounts/signup/", {"username": "frank", "password1": "frank", "password2": "frank"}
    )
    assert response.status_code == 200
    assert "This password is too short." in response.content.decode()
    assert not User.objects.filter(username="frank").exists()


def test_open_sign_up_needs_a_csrf_token(settings):
    settings.CHAT_OPEN_SIGNUP = True
    strict = Client(enforce_csrf_checks=True)
    response = strict.post(
        "/accounts/signup/", {"username": "frank", "password1": GOOD_PASSWORD, "password2": GOOD_PASSWORD}
    )
    assert response.status_code == 403
    assert not User.objects.filter(username="frank").exists()


# --- sign in, sign out, password change -----------------------------------------------------------


def test_it_refuses_a_wrong_password(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert client.get(reverse("chat:home")).status_code == 302


def test_it_signs_out(client, alice):
    client.force_login(alice)
    response = client.post(reverse("logout"))
    assert response["Location"] == reverse("login")
    assert client.get(reverse("chat:home")).status_code == 302


def test_the_page_links_password_change_and_sign_out(client, alice):
    client.force_login(alice)
    body = client.get(reverse("chat:home")).content.decode()
    assert f'href="{reverse("password_change")}"' in body
    assert f'action="{reverse("logout")}"' in body


def test_it_changes_the_password(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {"old_password": "alice-password-1", "new_password1": GOOD_PASSWORD, "new_password2": GOOD_PASSWORD},
    )
    assert response["Location"] == reverse("password_change_done")
    alice.refresh_from_db()
    assert alice.check_password(GOOD_PASSWORD)
    assert "Password changed" in client.get(reverse("password_change_done")).content.decode()
    assert client.get(reverse("chat:home")).status_code == 200  # this session stays signed in


def test_password_change_needs_the_old_password_and_a_good_new_one(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {"old_password": "wrong", "new_password1": "password", "new_password2": "password"},
    )
    body = response.content.decode()
    assert "Your old password was entered incorrectly" in body
    alice.refresh_from_db()
    assert alice.check_password("alice-password-1")


def test_password_change_requires_sign_in(client):
    response = client.get(reverse("password_change"))
    assert response["Location"].startswith(reverse("login"))


# --- the first admin's password hint on the sign-in page (issue #14) --------------------------


@pytest.fixture
def first_admin(settings, tmp_path) -> tuple[User, str]:
    """What `manage.py bootstrap` leaves: an `admin` superuser and its password in DATA_DIR."""
    settings.DATA_DIR = tmp_path
    call_command("bootstrap", stdout=io.StringIO())
    password = (tmp_path / "initial-admin-password").read_text().strip()
    return User.objects.get(username="admin"), password


HINT = 'data-testid="first-run-hint"'


def test_the_sign_in_page_says_where_the_first_password_is_until_the_admin_signs_in(client, first_admin):
    admin, password = first_admin
    assert HINT in client.get(reverse("login")).content.decode()
    assert client.post(reverse("login"), {"username": "admin", "password": password}).status_code == 302
    client.logout()
    assert HINT not in client.get(reverse("login")).content.decode()


def test_the_hint_goes_when_the_first_password_is_changed_without_signing_in(client, first_admin):
    admin, _ = first_admin
    admin.set_password("a-new-password-42")  # e.g. manage.py changepassword admin
    admin.save()
    assert HINT not in client.get(reverse("login")).content.decode()


def test_there_is_no_hint_without_the_kept_password(client, first_admin, settings):
    (settings.DATA_DIR / "initial-admin-password").unlink()
    assert HINT not in client.get(reverse("login")).content.decode()


def test_there_is_no_hint_on_a_site_without_an_admin_account(client, charlie, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    (tmp_path / "initial-admin-password").write_text("charlie-password-1\n")
    assert HINT not in client.get(reverse("login")).content.decode()


class CountingHasher(PBKDF2PasswordHasher):
    """The site's hasher, counting how often a password is checked."""

    iterations = 1000
    verified = 0

    def verify(self, password, encoded):
        type(self).verified += 1
        return super().verify(password, encoded)


def test_visits_to_the_sign_in_page_do_not_each_cost_a_password_hash(client, settings, tmp_path):
    settings.PASSWORD_HASHERS = ["tests.test_accounts.CountingHasher"]
    settings.DATA_DIR = tmp_path
    call_command("bootstrap", stdout=io.StringIO())
    counting = type(get_hashers()[0])  # the class as Django imported it from the setting
    counting.verified = 0
    for _ in range(3):
        assert HINT in client.get(reverse("login")).content.decode()
    assert counting.verified == 1
    admin = User.objects.get(username="admin")
    admin.set_password("changed-password-7")
    admin.save()
    assert HINT not in client.get(reverse("login")).content.decode()  # a new hash is checked again

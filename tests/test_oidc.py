"""Single sign-on without a browser: settings, claims to users, id token checks, the pages.

The id token checks run against a loopback server publishing a discovery document and a
signing key made for the test; the whole flow through a real provider is in
tests/test_oidc_login.py.
"""

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group, User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from jwt.algorithms import RSAAlgorithm

from chat import conf, oidc
from chat.models import Invite, SignInIdentity
from tests.live_server import free_port
from tests.test_settings import start

ISSUER = "https://sso.example.com/realms/team"


def claims(sub="s-1", **more):
    return {"sub": sub, "preferred_username": "alice", "email": "alice@example.com", **more}


@pytest.fixture
def sso_settings(settings):
    settings.CHAT_OIDC_ISSUER = ISSUER
    settings.CHAT_OIDC_CLIENT_ID = "chat"
    settings.CHAT_OIDC_CLIENT_SECRET = "client-secret-of-at-least-32-bytes"
    settings.CHAT_OIDC_STAFF_GROUPS = "chat-staff"
    settings.CHAT_OIDC_SUPERUSER_GROUPS = "chat-admins"
    settings.CHAT_OIDC_MIRROR_GROUPS = "team-a, team-b"
    settings.CHAT_OIDC_LABEL = "Keycloak"
    return settings


# --- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"CHAT_OIDC_ISSUER": ISSUER}, "CHAT_OIDC_CLIENT_ID is empty"),
        ({"CHAT_OIDC_CLIENT_ID": "chat"}, "CHAT_OIDC_ISSUER is empty"),
        ({"CHAT_OIDC_ISSUER": "sso.example.com", "CHAT_OIDC_CLIENT_ID": "chat"}, "CHAT_OIDC_ISSUER must be"),
        ({"CHAT_OIDC_ISSUER": ISSUER, "CHAT_OIDC_CLIENT_ID": "c", "CHAT_OIDC_SCOPES": "email"}, "openid"),
        ({"CHAT_PASSWORD_LOGIN": False}, "nobody could sign in"),
    ],
)
def test_settings_that_cannot_work_together_stop_start_up(values, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        conf.check_chat_settings({**conf.DEFAULTS, **values})


def test_a_bad_sign_in_setting_stops_start_up_naming_it(tmp_path):
    result = start(tmp_path, CHAT_PASSWORD_LOGIN="sometimes")
    assert result.returncode != 0
    assert "CHAT_PASSWORD_LOGIN" in result.stderr.splitlines()[-1]


def test_the_site_starts_while_the_provider_is_down(tmp_path):
    """Discovery waits for the first sign-in: nothing is fetched when settings load."""
    down = f"http://127.0.0.1:{free_port()}/o"
    result = start(tmp_path, CHAT_OIDC_ISSUER=down, CHAT_OIDC_CLIENT_ID="chat", CHAT_PASSWORD_LOGIN="false")
    assert result.returncode == 0, result.stderr


# --- claims to the user -------------------------------------------------------------------------
def test_groups_come_from_a_list_one_name_or_a_nested_claim():
    assert oidc.groups_in({"groups": ["a", "b"]}, "groups") == {"a", "b"}
    assert oidc.groups_in({"groups": "a"}, "groups") == {"a"}
    assert oidc.groups_in({"realm_access": {"roles": ["admin"]}}, "realm_access.roles") == {"admin"}
    assert oidc.groups_in({}, "groups") == set()


@pytest.mark.django_db
def test_first_sign_in_creates_the_user_without_a_password(sso_settings):
    user = oidc.sign_in_user(ISSUER, claims(given_name="Alice", family_name="Liddell", groups=["team-a"]))
    assert (user.username, user.email, user.first_name, user.last_name) == (
        "alice",
        "alice@example.com",
        "Alice",
        "Liddell",
    )
    assert not user.has_usable_password()
    assert not user.is_staff
    assert list(user.groups.values_list("name", flat=True)) == ["team-a"]
    assert SignInIdentity.objects.get(issuer=ISSUER, subject="s-1").user == user


@pytest.mark.django_db
def test_each_sign_in_updates_the_user_and_leaving_the_staff_group_ends_staff(sso_settings):
    user = oidc.sign_in_user(ISSUER, claims(groups=["chat-staff", "team-a"]))
    assert user.is_staff and not user.is_superuser
    user = oidc.sign_in_user(ISSUER, claims(email="alice@new.example.com", groups=["team-b"]))
    user.refresh_from_db()
    assert user.email == "alice@new.example.com"
    assert not user.is_staff
    assert list(user.groups.values_list("name", flat=True)) == ["team-b"]
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_the_superuser_group_makes_a_superuser_who_is_staff(sso_settings):
    user = oidc.sign_in_user(ISSUER, claims(groups=["chat-admins"]))
    assert user.is_superuser and user.is_staff


@pytest.mark.django_db
def test_groups_staff_gave_by_hand_stay_and_unlisted_provider_groups_are_not_mirrored(sso_settings):
    user = oidc.sign_in_user(ISSUER, claims(groups=["team-a"]))
    user.groups.add(Group.objects.create(name="beta-testers"))
    oidc.sign_in_user(ISSUER, claims(groups=["team-b", "everyone"]))
    assert sorted(user.groups.values_list("name", flat=True)) == ["beta-testers", "team-b"]
    assert not Group.objects.filter(name="everyone").exists()


@pytest.mark.django_db
def test_a_star_mirrors_every_provider_group(sso_settings):
    sso_settings.CHAT_OIDC_MIRROR_GROUPS = "*"
    user = oidc.sign_in_user(ISSUER, claims(groups=["x", "y"]))
    oidc.sign_in_user(ISSUER, claims(groups=["y"]))
    assert list(user.groups.values_list("name", flat=True)) == ["y"]


@pytest.mark.django_db
def test_staff_is_left_alone_when_no_staff_group_is_named(sso_settings):
    sso_settings.CHAT_OIDC_STAFF_GROUPS = sso_settings.CHAT_OIDC_SUPERUSER_GROUPS = ""
    user = oidc.sign_in_user(ISSUER, claims())
    User.objects.filter(pk=user.pk).update(is_staff=True)
    assert oidc.sign_in_user(ISSUER, claims(groups=[])).is_staff


@pytest.mark.django_db
def test_a_provider_user_never_takes_over_a_local_account_with_the_same_name_or_email(sso_settings):
    local = User.objects.create_user("alice", email="alice@example.com", password="local-password-1")
    user = oidc.sign_in_user(ISSUER, claims(groups=["chat-admins"]))
    assert user.pk != local.pk
    assert user.username.startswith("alice-") and len(user.username) == len("alice-") + 6
    local.refresh_from_db()
    assert local.check_password("local-password-1") and not local.is_superuser
    # The same person again: the same account, found by (issuer, sub), not by name.
    assert oidc.sign_in_user(ISSUER, claims()).pk == user.pk


@pytest.mark.django_db
def test_two_providers_users_with_one_name_and_subject_are_two_people(sso_settings):
    first = oidc.sign_in_user(ISSUER, claims())
    second = oidc.sign_in_user("https://accounts.google.com", claims())
    assert first.pk != second.pk
    assert first.username == "alice" and second.username.startswith("alice-")


@pytest.mark.django_db
def test_staff_can_link_an_existing_account_to_its_provider_identity(sso_settings):
    local = User.objects.create_user("alice.smith")
    SignInIdentity.objects.create(user=local, issuer=ISSUER, subject="s-1")
    assert oidc.sign_in_user(ISSUER, claims()).pk == local.pk


@pytest.mark.django_db
def test_a_disabled_account_is_refused(sso_settings):
    user = oidc.sign_in_user(ISSUER, claims())
    User.objects.filter(pk=user.pk).update(is_active=False)
    with pytest.raises(oidc.SignInRefused, match="disabled"):
        oidc.sign_in_user(ISSUER, claims())


# --- the id token -------------------------------------------------------------------------------
class KeyServer:
    """A provider's published half on loopback: a discovery document and a signing key."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwk = {**json.loads(RSAAlgorithm.to_jwk(self.key.public_key())), "kid": "k1", "alg": "RS256"}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = server.document
                elif self.path.endswith("/jwks"):
                    body = {"keys": [server.jwk]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.http.server_address[1]}/o"
        self.document = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize/",
            "token_endpoint": self.issuer + "/token/",
            "jwks_uri": self.issuer + "/jwks",
        }
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def token(self, key=None, algorithm="RS256", **changes) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": "chat",
            "sub": "s-1",
            "iat": now,
            "exp": now + 300,
            "nonce": "n",
        }
        payload.update(changes)
        return jwt.encode(payload, key or self.key, algorithm=algorithm, headers={"kid": "k1"})


@pytest.fixture
def keys(settings):
    server = KeyServer()
    settings.CHAT_OIDC_ISSUER = server.issuer
    settings.CHAT_OIDC_CLIENT_ID = "chat"
    settings.CHAT_OIDC_CLIENT_SECRET = "client-secret-of-at-least-32-bytes"
    yield server
    server.http.shutdown()
    server.http.server_close()


def test_a_token_signed_by_the_provider_for_this_site_is_accepted(keys):
    assert oidc.SignInBackend().verify_token(keys.token(), nonce="n")["sub"] == "s-1"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "another-site"}, "InvalidAudienceError"),
        ({"iss": "https://evil.example.com"}, "InvalidIssuerError"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nonce": "replayed"}, "nonce"),
    ],
)
def test_a_token_for_another_site_issuer_time_or_sign_in_is_refused(keys, changes, reason):
    with pytest.raises(oidc.SignInRefused, match=reason):
        oidc.SignInBackend().verify_token(keys.token(**changes), nonce="n")


def test_a_token_signed_with_the_client_secret_or_another_key_is_refused(keys):
    backend = oidc.SignInBackend()
    with pytest.raises(oidc.SignInRefused, match="HS256"):
        backend.verify_token(
            keys.token(key="client-secret-of-at-least-32-bytes", algorithm="HS256"), nonce="n"
        )
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(oidc.SignInRefused, match="signature"):
        backend.verify_token(keys.token(key=stranger), nonce="n")


def test_a_discovery_document_naming_another_issuer_is_not_trusted(keys):
    keys.document = {**keys.document, "issuer": "https://evil.example.com"}
    with pytest.raises(oidc.ProviderUnavailable, match="another issuer"):
        oidc.provider()


# --- the pages ----------------------------------------------------------------------------------
@pytest.fixture
def provider_down(settings):
    settings.CHAT_OIDC_ISSUER = f"http://127.0.0.1:{free_port()}/o"
    settings.CHAT_OIDC_CLIENT_ID = "chat"
    settings.CHAT_OIDC_LABEL = "Keycloak"
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, oidc.BACKEND]
    return settings


@pytest.mark.django_db
def test_the_sign_in_page_offers_the_provider_beside_passwords(client, provider_down):
    page = client.get("/accounts/login/?next=/c/5/").content.decode()
    assert 'data-testid="sso-login" href="/accounts/oidc/start/?next=/c/5/"' in page
    assert "Sign in with Keycloak" in page
    assert 'data-testid="login-form"' in page


@pytest.mark.django_db
def test_a_provider_that_cannot_be_reached_gets_a_clear_page(client, provider_down):
    answer = client.get("/accounts/oidc/start/")
    assert answer.status_code == 502
    assert "Keycloak cannot be reached" in answer.content.decode()


@pytest.mark.django_db
def test_a_sign_in_the_provider_refused_or_a_stale_link_gets_a_clear_page(client, provider_down):
    answer = client.get("/accounts/oidc/callback/?error=access_denied&state=x")
    assert answer.status_code == 403
    assert "Keycloak did not sign you in (access_denied)" in answer.content.decode()
    session = client.session
    session["oidc_states"] = {"known": {"nonce": "n", "code_verifier": "v", "added_on": time.time()}}
    session.save()
    answer = client.get("/accounts/oidc/callback/?code=c&state=unknown")
    assert answer.status_code == 400
    assert "already used or was started in another browser" in answer.content.decode()


@pytest.mark.django_db
def test_the_admin_sign_in_goes_to_the_sites_page(client, provider_down):
    answer = client.get("/admin/login/?next=/admin/chat/")
    assert answer.status_code == 302
    assert answer["Location"] == "/accounts/login/?next=/admin/chat/"


@pytest.mark.django_db
def test_with_password_sign_in_off_only_the_provider_signs_people_in(client, provider_down):
    provider_down.CHAT_PASSWORD_LOGIN = False
    User.objects.create_user("alice", password="alice-password-1")
    page = client.get("/accounts/login/").content.decode()
    assert "Sign in with Keycloak" in page and 'data-testid="login-form"' not in page
    answer = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    assert answer.status_code == 403 and "_auth_user_id" not in client.session
    invite = Invite.objects.create(email="new@example.com")
    for path in (invite.link_path(), "/accounts/signup/", "/accounts/password_reset/"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "sign in with Keycloak" in answer.content.decode()


@pytest.mark.django_db
def test_the_pages_may_post_sign_out_to_the_provider(client, provider_down):
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    assert f"form-action 'self' {provider_down.CHAT_OIDC_ISSUER.removesuffix('/o')};" in policy


@pytest.mark.django_db
def test_staff_without_the_permission_cannot_see_identities_in_the_admin(client):
    staff = User.objects.create_user("nils", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/chat/signinidentity/").status_code == 403
    admin_user = User.objects.create_superuser("root")
    SignInIdentity.objects.create(user=staff, issuer=ISSUER, subject="s-42")
    client.force_login(admin_user)
    assert "s-42" in client.get("/admin/chat/signinidentity/").content.decode()


@pytest.mark.django_db
def test_with_sso_only_the_first_run_makes_no_password_admin(settings):
    settings.CHAT_PASSWORD_LOGIN = False
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    assert not User.objects.exists()
    assert "CHAT_OIDC_SUPERUSER_GROUPS" in out.getvalue()

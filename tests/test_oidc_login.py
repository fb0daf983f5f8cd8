"""Single sign-on in a real browser against a real OpenID Connect provider (issue #15).

The provider is django-oauth-toolkit in its own daphne process (tests/oidc_provider), with
an RSA key made for this run and the user's groups in a `groups` claim; a loopback proxy in
front of it can spoil the id token its token endpoint returns. The chat site is a live
daphne configured only by environment variables, as an operator would.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.browser import WAIT_MS, browser, expect  # noqa: F401  (browser: a fixture)
from tests.live_server import LiveServer, Site
from tests.oidc_provider.server import ProviderServer, TokenProxy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "provider password 42"
CLIENT_SECRET = "chat-client-secret-for-this-run"
USERS = [
    {"username": "ada", "email": "ada@example.com", "given_name": "Ada", "groups": ["staff", "team-a"]},
    {"username": "bob", "email": "bob@example.com", "given_name": "Bob", "groups": ["team-a"]},
    {"username": "cleo", "email": "cleo@example.com", "groups": []},
    {"username": "dan", "email": "dan@example.com", "groups": []},
]


@dataclass
class SSO:
    provider: ProviderServer
    proxy: TokenProxy
    site: Site
    server: LiveServer


@pytest.fixture(scope="module")
def sso(tmp_path_factory):
    root = tmp_path_factory.mktemp("sso")
    provider = ProviderServer(root / "provider")
    proxy = TokenProxy(provider)
    site = Site(
        root / "chat",
        env={
            "CHAT_OIDC_ISSUER": proxy.issuer,
            "CHAT_OIDC_CLIENT_ID": "chat",
            "CHAT_OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "CHAT_OIDC_STAFF_GROUPS": "staff",
            "CHAT_OIDC_MIRROR_GROUPS": "team-a",
            "CHAT_OIDC_LABEL": "Test SSO",
        },
    )
    server = site.server(start=False)
    # The two databases are made side by side: each migration run takes seconds.
    with ThreadPoolExecutor(2) as pool:
        migrated = pool.submit(site.migrate)
        provider.start()
        migrated.result()
    try:
        with proxy:
            provider.setup(
                {
                    "users": [{**user, "password": PASSWORD} for user in USERS],
                    "client": {
                        "client_id": "chat",
                        "client_secret": CLIENT_SECRET,
                        "redirect_uri": server.url("/accounts/oidc/callback/"),
                        "post_logout_redirect_uri": server.url("/accounts/login/"),
                    },
                }
            )
            server.start()
            yield SSO(provider, proxy, site, server)
    finally:
        site.stop()
        provider.stop()
    assert CLIENT_SECRET not in server.log_text(), "the client secret reached the server log"


@pytest.fixture
def page(browser, sso):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    yield context.new_page()
    context.close()
    sso.proxy.mode = "pass"


def sign_in(page, sso: SSO, username: str) -> None:
    """From the chat site's sign-in page through the provider's, back to the chat site."""
    page.goto(sso.server.url("/accounts/login/"))
    page.get_by_test_id("sso-login").click()
    expect(page).to_have_url(re.compile(re.escape(sso.proxy.origin) + "/accounts/login/"))
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_test_id("provider-submit").click()


def test_it_signs_in_through_the_provider_and_staff_reach_the_admin(page, sso):
    page.goto(sso.server.url("/accounts/login/"))
    expect(page.get_by_test_id("sso-login")).to_have_text("Sign in with Test SSO")
    expect(page.get_by_test_id("login-form")).to_be_visible()  # passwords still work beside it

    sign_in(page, sso, "ada")
    expect(page).to_have_url(sso.server.url("/"))
    expect(page.locator(".sidebar-foot .who")).to_have_text("ada")

    answer = page.goto(sso.server.url("/admin/"))
    assert answer.status == 200
    expect(page).to_have_url(sso.server.url("/admin/"))
    expect(page.locator("#site-name")).to_contain_text("Chat admin")
    user = sso.site.query("SELECT is_staff, email, first_name FROM auth_user WHERE username = 'ada'")
    assert user == [{"is_staff": 1, "email": "ada@example.com", "first_name": "Ada"}]


def test_one_outside_the_staff_group_does_not_reach_the_admin(page, sso):
    sign_in(page, sso, "bob")
    expect(page.locator(".sidebar-foot .who")).to_have_text("bob")

    answer = page.goto(sso.server.url("/admin/"))
    assert answer.status == 403
    expect(page.get_by_test_id("sso-failed-heading")).to_have_text("Staff only")
    groups = sso.site.query(
        "SELECT g.name FROM auth_group g JOIN auth_user_groups ug ON ug.group_id = g.id "
        "JOIN auth_user u ON u.id = ug.user_id WHERE u.username = 'bob'"
    )
    assert groups == [{"name": "team-a"}]  # mirrored, so bob's budget is team-a's


def test_signing_out_ends_the_session_here_and_at_the_provider(page, sso):
    sign_in(page, sso, "cleo")
    expect(page.locator(".sidebar-foot .who")).to_have_text("cleo")

    page.get_by_role("button", name="Sign out").click()
    # Through the provider's end_session_endpoint and back to the sign-in page.
    expect(page).to_have_url(sso.server.url("/accounts/login/"))
    page.goto(sso.server.url("/"))
    expect(page).to_have_url(re.compile(re.escape(sso.server.url("/accounts/login/"))))
    # The provider's session ended too: signing in again asks for the password there.
    page.get_by_test_id("sso-login").click()
    expect(page.get_by_test_id("provider-login")).to_be_visible()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("tamper", "signature is not the provider's"), ("expire", "expired")],
)
def test_a_spoiled_id_token_is_refused_with_a_clear_page(page, sso, mode, reason):
    sso.proxy.mode = mode
    spoiled = sso.proxy.spoiled
    sign_in(page, sso, "dan")

    expect(page.get_by_test_id("sso-failed-heading")).to_have_text("Sign-in refused")
    expect(page.get_by_test_id("sso-failed-detail")).to_contain_text(reason)
    assert sso.proxy.spoiled == spoiled + 1
    page.goto(sso.server.url("/"))
    expect(page).to_have_url(re.compile(re.escape(sso.server.url("/accounts/login/"))))
    assert sso.site.query("SELECT id FROM auth_user WHERE username LIKE 'dan%'") == []

"""The chat page in a real browser, shared by the tests/test_browser*.py and test_page_*.py
modules: Debian's Chromium driven by Playwright, against a live daphne whose model provider
is a loopback server the test scripts byte by byte.

One browser, one upstream and one server per module; each test gets its own user (so its
own sidebar) and a fresh browser context. A module adds its own data by defining a
module-scoped `site_setup` fixture that returns Python code run in `manage.py shell` after
BASE_SETUP (the users of USERS, signed in, and `chat(user, title, *texts, **fields)`).
Screenshots go to test-artifacts/screenshots/ (git-ignored).

    from tests.browser import *  # noqa: F403  (fixtures and helpers)
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from tests.conftest import TEST_API_KEY
from tests.live_server import REPO, Site
from tests.upstream_server import Reply, UpstreamServer, chat_chunks, sse

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = playwright_sync.expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"
USERS = "alice bob carol dana erin frank gina hank ivan judy ken lena mona otto pia quinn rita sam tom uma vera walt xena yuri zeno nora pat".split()
WAIT_MS = 10_000
# Token counts (stats, trimming, budgets) need tiktoken's vocabularies on disk.
VOCABULARIES = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or "/nonexistent")
COUNTING = VOCABULARIES.is_dir() and any(VOCABULARIES.iterdir())
expect.set_options(timeout=WAIT_MS)

REPLIES = '#messages [data-testid="message"][data-role="assistant"]'
USER_MESSAGES = '#messages [data-testid="message"][data-role="user"]'
USER_TEXTS = USER_MESSAGES + " [data-body]"


# ---------------------------------------------------------------------------- scripted replies


class Gate:
    """Stands in for `Reply.wait_for`: lets one SSE event through per `release()`.

    The upstream server asks `is_set()` before every body piece after the first, so a
    test decides exactly how much of the reply exists at any moment.
    """

    def __init__(self) -> None:
        self._allowed = 0
        self._lock = threading.Lock()

    def release(self, events: int = 1) -> None:
        with self._lock:
            self._allowed += events

    def open(self) -> None:
        self.release(1_000_000)

    def is_set(self) -> bool:
        with self._lock:
            if self._allowed > 0:
                self._allowed -= 1
                return True
            return False


def reply(pieces: list[str], **kwargs) -> Reply:
    return Reply(body=sse(*chat_chunks(pieces, **kwargs)))


def gated(pieces: list[str], **kwargs) -> tuple[Reply, Gate]:
    """A reply that sends nothing but its headers until released: `release(1 + n)` lets the
    role chunk and the first n pieces through; `open()` lets the rest through."""
    gate = Gate()
    # The empty first piece is skipped by the server, so every event waits for the gate.
    return Reply(body=[b"", *sse(*chat_chunks(pieces, **kwargs))], wait_for=gate), gate


def error_reply(status: int, message: str) -> Reply:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}})
    return Reply(status=status, headers={"content-type": "application/json"}, body=[body.encode()])


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def llm():
    with UpstreamServer() as server:
        yield server


BASE_SETUP = """
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from chat.models import Budget, ChatModel, Conversation, Message, Provider

from django.contrib.auth.hashers import make_password

# One hash for all: hashing is slow by design (about 0.5 s each here), and every user has
# the same password.
hashed = make_password(PASSWORD)
result = {}
for name in USERS:
    user = User.objects.create(username=name, password=hashed)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    # The backend that signs users in: the model backend, not the throttle listed before it (axes).
    session[BACKEND_SESSION_KEY] = next(b for b in settings.AUTHENTICATION_BACKENDS if not b.startswith("axes."))
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    result[name] = session.session_key

def chat(user, title, *texts, **fields):
    conversation = Conversation.objects.create(user=User.objects.get(username=user), title=title, **fields)
    for i, text in enumerate(texts):
        Message.objects.create(
            conversation=conversation, role="user" if i % 2 == 0 else "assistant", content=text,
            status="finished", token_count=60,
        )
    return conversation
"""


@pytest.fixture(scope="module")
def site_setup():
    """More setup code for a module's site (override in the module); BASE_SETUP runs first."""
    return ""


@pytest.fixture(scope="module")
def site(tmp_path_factory, llm, site_setup):
    site = Site(tmp_path_factory.mktemp("browser"), upstream=llm)
    site.migrate()
    code = (
        f"USERS = {USERS!r}\nPASSWORD = {PASSWORD!r}\nBASE_URL = {llm.base_url!r}\nAPI_KEY = {TEST_API_KEY!r}\n"
        + BASE_SETUP
        + site_setup
    )
    site.sessions = site.shell(code)
    yield site
    site.stop()


@pytest.fixture(scope="module")
def server(site):
    with site.server() as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def gates(llm):
    """Queue and gates of this test only: nothing left over from the last, nothing left held."""
    with llm._lock:
        llm._replies.clear()
    opened: list[Gate] = []
    yield opened
    for gate in opened:
        gate.open()


@pytest.fixture
def open_page(browser, server, site, gates):
    """`open_page(user, path="/", **context_options)`: a signed-in page in a fresh context."""
    contexts = []

    def open_(user: str | None, path: str = "/", **options):
        context = browser.new_context(
            viewport=options.pop("viewport", {"width": 1280, "height": 800}), **options
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        if user:
            context.add_cookies([{"name": "sessionid", "value": site.sessions[user], "url": server.origin}])
        page = context.new_page()
        page.goto(server.url(path))
        return page

    yield open_
    for context in contexts:
        context.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def contrast(element) -> float:
    """WCAG contrast ratio between an element's computed text and background colours."""
    colours = element.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")

    def luminance(css: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", css)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted(map(luminance, colours), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def send(page, text: str) -> None:
    page.get_by_test_id("composer").fill(text)
    page.get_by_test_id("send").click()


def last_reply(page):
    return page.locator(REPLIES).last


def body(message):
    return message.locator("[data-body]")


def wait_finished(page, status: str = "finished") -> None:
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", status)
    expect(body(reply)).to_have_class(re.compile(r"\bmd\b"))  # the server's rendering is in
    expect(page.get_by_test_id("send")).to_be_visible()

"""The page and the server's own events (issue #14): a reply cut by a restart, titles the
model writes, token counts that cannot be made. Fixtures and helpers: tests/browser.py."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from urllib.parse import urlparse

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    BASE_SETUP,
    PASSWORD,
    USERS,
    Gate,
    body,
    browser,
    expect,
    gated,
    gates,
    last_reply,
    llm,
    open_page,
    reply,
    send,
    server,
    shot,
    wait_finished,
)
from tests.conftest import TEST_API_KEY
from tests.live_server import Site
from tests.upstream_server import Reply

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def site(tmp_path_factory, llm):
    # Checkpoints far apart, so what a crash loses is decided by the test, not by a timer.
    site = Site(
        tmp_path_factory.mktemp("browser"),
        upstream=llm,
        env={"CHAT_CHECKPOINT_INTERVAL": "30", "CHAT_LEASE_SECONDS": "60", "CHAT_MODEL_TITLES": "true"},
    )
    site.migrate()
    code = f"USERS = {USERS!r}\nPASSWORD = {PASSWORD!r}\nBASE_URL = {llm.base_url!r}\nAPI_KEY = {TEST_API_KEY!r}\n"
    site.sessions = site.shell(code + BASE_SETUP)
    yield site
    site.stop()


def save_as_last_checkpoint(site: Site, reply_id: int, content: str) -> None:
    """Leave in the database what the last checkpoint before a crash would have saved."""
    with closing(sqlite3.connect(urlparse(site.database_url).path, timeout=10)) as db:
        db.execute("UPDATE chat_message SET content = ? WHERE id = ?", (content, reply_id))
        db.commit()


def test_a_reply_cut_by_a_crash_keeps_the_text_the_tab_showed_marked_as_not_saved(
    open_page, llm, server, site, gates
):
    page = open_page("alice")
    held, gate = gated(["Saved part. ", "Shown but ", "not saved."])
    gates.append(gate)
    llm.queue(held)
    gate.release(1 + 3)
    send(page, "Tell me a story")
    reply_el = last_reply(page)
    expect(body(reply_el)).to_have_text("Saved part. Shown but not saved.")
    reply_id = int(reply_el.get_attribute("data-message-id"))

    server.kill()  # SIGKILL: a crash, no flush
    expect(page.get_by_test_id("offline-banner")).to_be_visible()
    save_as_last_checkpoint(site, reply_id, "Saved part. ")
    server.start()
    page.evaluate("dispatchEvent(new Event('online'))")  # reconnect now, not after the backoff

    expect(reply_el).to_have_attribute("data-status", "interrupted")
    expect(body(reply_el)).to_have_text("Saved part.")
    tail = reply_el.get_by_test_id("unsaved-tail")
    expect(tail).to_contain_text("Not saved: the server restarted")
    expect(tail.locator(".msg-unsaved-text")).to_have_text("Shown but not saved.")
    expect(reply_el.locator("[data-error-text]")).to_contain_text("The server stopped")
    shot(page, "unsaved-tail")

    page.reload()  # what was never saved cannot come back, and the page says nothing false
    reply_el = last_reply(page)
    expect(body(reply_el)).to_have_text("Saved part.")
    expect(reply_el.get_by_test_id("unsaved-tail")).to_have_count(0)


def test_without_vocabularies_the_page_says_tokens_are_not_counted_and_how_to_fix_it(browser, llm, tmp_path):
    empty = tmp_path / "no-vocabularies"
    empty.mkdir()
    site = Site(tmp_path, upstream=llm, env={"TIKTOKEN_CACHE_DIR": str(empty)})
    site.migrate()
    site.shell(
        "from django.contrib.auth.models import User\nfrom chat.models import Budget\n"
        f"user = User.objects.create_user('nina', password={PASSWORD!r})\n"
        "Budget.objects.create(user=user, tokens_per_day=100000)"
    )
    with llm._lock:
        llm._replies.clear()
    with site.server() as live:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            context.add_cookies(
                [{"name": "sessionid", "value": live.login("nina", PASSWORD), "url": live.origin}]
            )
            page = context.new_page()
            page.goto(live.url("/"))
            budget = page.get_by_test_id("budget")
            # Not "100,000 tokens left today", a figure that would never go down.
            expect(budget).to_have_text("Tokens left can't be shown: this server is not counting tokens.")
            expect(budget).to_have_attribute(
                "title", re.compile(r"\./run\.sh.*manage\.py fetch_vocabularies")
            )

            llm.queue(reply(["Counted by ", "nobody."]))
            send(page, "How many tokens is this?")
            wait_finished(page)
            stats = last_reply(page).get_by_test_id("message-stats")
            expect(stats).to_contain_text("tokens not counted")
            expect(stats).to_have_attribute("title", re.compile(r"\./run\.sh.*manage\.py fetch_vocabularies"))
            expect(budget).to_have_text("Tokens left can't be shown: this server is not counting tokens.")
            shot(page, "tokens-not-counted")

            page.reload()  # the server's own rendering says the same
            stats = last_reply(page).get_by_test_id("message-stats")
            expect(stats).to_have_attribute("title", re.compile(r"fetch_vocabularies"))
        finally:
            context.close()


def whole(content: str, gate) -> Reply:
    """A non-streamed answer (the title request asks for `stream: false`), held by `gate`."""
    answer = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ]
    }
    return Reply(
        headers={"content-type": "application/json"}, body=[b"", json.dumps(answer).encode()], wait_for=gate
    )


def test_a_new_chat_is_titled_by_the_model_in_the_header_sidebar_and_window_title(open_page, llm, gates):
    page = open_page("bob")
    gate = Gate()
    gates.append(gate)
    llm.queue(reply(["Water it when the soil is dry."]), whole("Keeping Basil Alive", gate))
    send(page, "How do I keep basil alive on a windowsill?")
    wait_finished(page)
    item = page.get_by_test_id("conversation-item").first
    expect(item).to_have_text("How do I keep basil alive on a windowsill?")  # the first words, at once
    expect(page.locator("#title")).to_have_text("How do I keep basil alive on a windowsill?")

    gate.open()  # the model's title arrives after the reply: no reload
    expect(page.locator("#title")).to_have_text("Keeping Basil Alive")
    expect(item).to_have_text("Keeping Basil Alive")
    expect(page).to_have_title("Keeping Basil Alive · Chat")
    shot(page, "model-title")

    page.reload()  # saved, not only shown
    expect(page.locator("#title")).to_have_text("Keeping Basil Alive")

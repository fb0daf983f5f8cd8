"""Shared links in a real browser (issue #15): the owner makes a link from the chat's ⋯ menu and
copies it, another user opens it read-only, the owner sees who did, chooses to show the
system prompt, and revokes it: the link is then a 404 (fixtures and helpers: tests/browser.py)."""

from __future__ import annotations

import re

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    browser,
    expect,
    gates,
    llm,
    open_page,
    reply,
    send,
    server,
    shot,
    site,
    wait_finished,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = r"""
trip = chat(
    "bob", "Trip to Lisbon", "Where to in May?", "**Lisbon**, then Porto.",
    system_prompt="You are Bob's secret planner.",
)
chat("bob", "Bob's other chat", "Not for sharing.")
result["_ids"] = {"trip": trip.pk}
"""


@pytest.fixture(scope="module")
def site_setup():
    return SETUP


def open_share_dialog(page):
    page.get_by_test_id("menu").click()
    page.get_by_test_id("share").click()
    dialog = page.get_by_test_id("share-dialog")
    expect(dialog).to_be_visible()
    return dialog


def test_a_link_is_made_opened_watched_and_revoked(open_page, site, server):
    trip = site.sessions["_ids"]["trip"]
    owner = open_page("bob", f"/c/{trip}/", permissions=["clipboard-read", "clipboard-write"])
    dialog = open_share_dialog(owner)
    expect(dialog.get_by_test_id("share-nobody")).to_be_visible()
    expect(dialog.get_by_test_id("share-url")).to_be_hidden()
    dialog.get_by_test_id("share-create").click()
    url = dialog.get_by_test_id("share-url")
    expect(url).to_have_value(re.compile(r"^http://[^/]+/s/[A-Za-z0-9_-]{40,}/$"))
    link = url.input_value()
    path = re.sub(r"^http://[^/]+", "", link)
    dialog.get_by_test_id("share-copy").click()
    expect(dialog.get_by_test_id("share-copy")).to_have_text("Copied")
    assert owner.evaluate("navigator.clipboard.readText()") == link
    expect(dialog.get_by_test_id("share-create")).to_be_hidden()

    # Signed out: sent to sign in first, and back to the link after.
    anonymous = open_page(None, path)
    expect(anonymous).to_have_url(re.compile(r"/accounts/login/\?next=/s/"))

    reader = open_page("dana", path)
    expect(reader.get_by_test_id("conversation-title")).to_have_text("Trip to Lisbon")
    expect(reader.get_by_test_id("shared-note")).to_contain_text("Shared by bob")
    messages = reader.get_by_test_id("message")
    expect(messages).to_have_count(2)
    expect(messages.nth(1).locator("[data-body] strong")).to_have_text("Lisbon")  # rendered Markdown
    expect(reader.get_by_test_id("composer")).to_have_count(0)
    expect(reader.get_by_test_id("regenerate")).to_have_count(0)
    expect(reader.locator("body")).not_to_contain_text("secret planner")
    expect(reader.locator("body")).not_to_contain_text("Bob's other chat")
    shot(reader, "shared-link")

    # The owner sees who opened it, the next time the dialog opens.
    dialog.get_by_role("button", name="Close").click()
    dialog = open_share_dialog(owner)
    viewer = dialog.get_by_test_id("share-viewer")
    expect(viewer).to_have_count(1)
    expect(viewer).to_contain_text("dana")
    expect(viewer).to_contain_text("once")
    expect(dialog.get_by_test_id("share-nobody")).to_be_hidden()

    # Showing the system prompt is the owner's choice, made on the same link.
    dialog.get_by_test_id("share-show-prompt").check()
    expect(dialog).not_to_have_attribute("aria-busy", "true")  # saved
    expect(dialog.get_by_test_id("share-url")).to_have_value(link)
    reader.reload()
    expect(reader.get_by_test_id("shared-system-prompt")).to_have_text("You are Bob's secret planner.")
    shot(owner, "share-dialog")

    dialog.get_by_test_id("share-revoke").click()
    expect(dialog.get_by_test_id("share-create")).to_be_visible()
    expect(dialog.get_by_test_id("share-url")).to_be_hidden()
    expect(dialog.get_by_test_id("share-viewer")).to_contain_text("revoked link")  # who read it stays known
    gone = reader.reload()
    assert gone.status == 404
    expect(reader.locator("body")).not_to_contain_text("Lisbon")


def test_a_chat_started_on_the_page_can_be_shared_at_once(open_page, llm):
    page = open_page("erin")
    llm.queue(reply(["Fresh answer."]))
    send(page, "A fresh question")
    wait_finished(page)
    dialog = open_share_dialog(page)
    dialog.get_by_test_id("share-create").click()
    url = dialog.get_by_test_id("share-url")
    expect(url).to_have_value(re.compile(r"/s/"))
    reader = open_page("frank", re.sub(r"^http://[^/]+", "", url.input_value()))
    expect(reader.get_by_test_id("message").first).to_contain_text("A fresh question")

"""Versions of messages on the page (issue #14): the `‹ 2/3 ›` switcher on regenerated replies
and edited messages, kept across reloads and other tabs; editing any user message in place,
with a quiet hint (fixtures and helpers: tests/browser.py)."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    REPLIES,
    USER_MESSAGES,
    USER_TEXTS,
    body,
    browser,
    expect,
    gates,
    last_reply,
    llm,
    open_page,
    reply,
    send,
    server,
    shot,
    site,
    wait_finished,
)


@pytest.fixture(scope="module")
def site_setup():
    return ""  # every test starts its own chat


def versions_of(message):
    return message.locator("[data-versions]")


def label_of(message):
    return message.get_by_test_id("version-label")


def converse(page, llm, *turns: tuple[str, str]) -> None:
    for question, answer in turns:
        llm.queue(reply([answer]))
        send(page, question)
        expect(body(last_reply(page))).to_have_text(answer)
        wait_finished(page)


def regenerate(page, llm, answer: str) -> None:
    llm.queue(reply([answer]))
    last_reply(page).get_by_test_id("regenerate").click()
    expect(body(last_reply(page))).to_have_text(answer)
    wait_finished(page)


def test_regenerated_replies_keep_their_versions_across_reloads_and_the_next_send(open_page, llm):
    page = open_page("alice")
    converse(page, llm, ("Name a colour", "Red."))
    expect(versions_of(last_reply(page))).to_be_hidden()  # one version: no switcher
    regenerate(page, llm, "Blue.")
    expect(label_of(last_reply(page))).to_have_text("2/2")
    regenerate(page, llm, "Green.")
    answer = last_reply(page)
    expect(label_of(answer)).to_have_text("3/3")
    expect(answer.get_by_test_id("version-next")).to_be_disabled()
    shot(page, "versions-3-of-3")

    answer.get_by_role("button", name="Previous version").click()
    expect(label_of(last_reply(page))).to_have_text("2/3")
    expect(body(last_reply(page))).to_have_text("Blue.")
    # The keyboard stays on the switcher: Enter goes on back.
    expect(last_reply(page).get_by_test_id("version-previous")).to_be_focused()
    page.keyboard.press("Enter")
    expect(label_of(last_reply(page))).to_have_text("1/3")
    expect(body(last_reply(page))).to_have_text("Red.")
    expect(page.locator(REPLIES)).to_have_count(1)
    expect(last_reply(page).get_by_test_id("version-next")).to_be_focused()  # previous is disabled now
    shot(page, "versions-1-of-3")

    page.reload()
    expect(label_of(last_reply(page))).to_have_text("1/3")
    expect(body(last_reply(page))).to_have_text("Red.")
    phone = open_page("alice", urlparse(page.url).path, viewport={"width": 390, "height": 844})
    following = last_reply(phone).get_by_test_id("version-next")  # it fits, and a finger can hit it
    expect(following).to_be_in_viewport()
    box = following.bounding_box()
    assert box["x"] + box["width"] <= 390 and box["width"] >= 24 and box["height"] >= 24
    shot(phone, "versions-phone")

    converse(page, llm, ("Why that one?", "Because."))
    assert llm.requests[-1]["json"]["messages"] == [
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Why that one?"},
    ]


def test_any_user_message_is_edited_in_place_with_a_quiet_hint(open_page, llm):
    page = open_page("bob")
    converse(page, llm, ("Q1", "A1"), ("Q2", "A2"), ("Q3", "A3"))
    users = page.locator(USER_MESSAGES)
    for index in range(3):  # every user message offers Edit, not only the last
        expect(users.nth(index).get_by_test_id("edit")).to_be_visible()

    middle = users.nth(1)
    middle.get_by_test_id("edit").click()
    editor = middle.get_by_test_id("edit-input")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Q2")
    hint = middle.get_by_test_id("edit-hint")
    expect(hint).to_be_visible()
    expect(page.get_by_test_id("toast")).to_be_hidden()  # no red alert for a hint
    assert hint.get_attribute("role") is None
    muted = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--fg-muted')")
    colour = hint.evaluate("e => getComputedStyle(e).color")
    assert colour == page.evaluate(
        "c => { const p = document.createElement('p'); p.style.color = c; document.body.append(p);"
        " const v = getComputedStyle(p).color; p.remove(); return v; }",
        muted.strip(),
    )
    assert hint.evaluate("e => getComputedStyle(e).backgroundColor") == "rgba(0, 0, 0, 0)"
    shot(page, "versions-editing-in-place")

    editor.fill("Q2, said better")
    llm.queue(reply(["A2, better."]))
    middle.get_by_test_id("edit-save").click()
    expect(page.locator(USER_TEXTS)).to_have_text(["Q1", "Q2, said better"])
    expect(body(last_reply(page))).to_have_text("A2, better.")
    wait_finished(page)
    expect(page.get_by_test_id("edit-hint")).to_have_count(0)  # gone once the edit is sent
    assert llm.requests[-1]["json"]["messages"] == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2, said better"},
    ]
    edited = page.locator(USER_MESSAGES).nth(1)
    expect(label_of(edited)).to_have_text("2/2")
    shot(page, "versions-after-an-edit")

    edited.get_by_role("button", name="Previous version").click()
    expect(page.locator(USER_TEXTS)).to_have_text(["Q1", "Q2", "Q3"])  # the old branch, all of it
    expect(page.locator(REPLIES).locator("[data-body]")).to_have_text(["A1", "A2", "A3"])
    expect(label_of(page.locator(USER_MESSAGES).nth(1))).to_have_text("1/2")
    page.reload()
    expect(page.locator(USER_TEXTS)).to_have_text(["Q1", "Q2", "Q3"])


def test_escape_and_cancel_leave_the_message_as_it_was(open_page, llm):
    page = open_page("carol")
    converse(page, llm, ("First", "One"), ("Second", "Two"))
    first = page.locator(USER_MESSAGES).first
    first.get_by_test_id("edit").click()
    first.get_by_test_id("edit-input").fill("Changed my mind")
    page.keyboard.press("Escape")
    expect(first.get_by_test_id("editor")).to_have_count(0)
    expect(body(first)).to_have_text("First")
    first.get_by_test_id("edit").click()
    expect(first.get_by_test_id("edit-input")).to_have_value("First")
    first.get_by_test_id("edit-cancel").click()
    expect(first.get_by_test_id("editor")).to_have_count(0)
    expect(page.locator(USER_TEXTS)).to_have_text(["First", "Second"])
    assert len([r for r in llm.requests if r["json"]["messages"][-1]["content"] == "Changed my mind"]) == 0


def test_another_tab_follows_the_version_chosen(open_page, llm):
    page = open_page("dana")
    converse(page, llm, ("Pick a number", "Seven."))
    other = page.context.new_page()
    other.goto(page.url)
    expect(body(last_reply(other))).to_have_text("Seven.")
    regenerate(other, llm, "Three.")  # through the other tab's socket: both are open now
    expect(body(last_reply(page))).to_have_text("Three.")
    expect(page.get_by_test_id("send")).to_be_visible()
    expect(label_of(last_reply(page))).to_have_text("2/2")
    last_reply(page).get_by_role("button", name="Previous version").click()
    expect(body(last_reply(page))).to_have_text("Seven.")
    expect(body(last_reply(other))).to_have_text("Seven.")
    expect(label_of(last_reply(other))).to_have_text("1/2")

    # An edit being typed in one tab is kept when another tab switches versions.
    question = other.locator(USER_MESSAGES).first
    question.get_by_test_id("edit").click()
    question.get_by_test_id("edit-input").fill("Pick a prime, half-typed")
    last_reply(page).get_by_role("button", name="Next version").click()
    expect(body(last_reply(other))).to_have_text("Three.")
    expect(other.locator(USER_MESSAGES).first.get_by_test_id("edit-input")).to_have_value(
        "Pick a prime, half-typed"
    )

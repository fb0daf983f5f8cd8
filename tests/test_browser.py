"""The chat page in a real browser: Debian's Chromium driven by Playwright, against a live
daphne whose model provider is a loopback server this module scripts byte by byte
(fixtures and helpers: tests/browser.py)."""

from __future__ import annotations

import json
import re
import threading

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    CHROMIUM,
    COUNTING,
    PASSWORD,
    REPLIES,
    SCREENSHOTS,
    USER_MESSAGES,
    USER_TEXTS,
    VOCABULARIES,
    WAIT_MS,
    Gate,
    body,
    browser,
    contrast,
    error_reply,
    expect,
    gated,
    gates,
    last_reply,
    llm,
    open_page,
    playwright_sync,
    reply,
    send,
    server,
    shot,
    site,
    wait_finished,
)
from tests.conftest import TEST_API_KEY
from tests.live_server import Site

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = """
# dana: the sidebar (oldest first, so "Garden plans" is newest)
chat("dana", "Trip to Lisbon", "Where do I find the best pastel de nata?", "Try Belem.")
chat("dana", "Tax questions", "Which deductions can I claim?", "It depends.")
chat("dana", "Garden plans", "When do I plant tomatoes?", "After the last frost.")

# yuri: an earlier conversation that a new question must not land in
chat("yuri", "Last week's chat", "An old question", "An old answer.")

# frank: a model with a tiny context window, some history, and a daily budget
provider = Provider.objects.create(name="loopback", base_url=BASE_URL, api_key=API_KEY)
ChatModel.objects.create(provider=provider, name="tiny-window", context_window=1100, max_reply_tokens=1024)
words = " ".join(["history"] * 60)
chat("frank", "Long chat", words, words, words, words, model="tiny-window")
Budget.objects.create(user=User.objects.get(username="frank"), tokens_per_day=50000)
# gina may send one message a minute; hank has no tokens left today
Budget.objects.create(user=User.objects.get(username="gina"), sends_per_minute=1)
Budget.objects.create(user=User.objects.get(username="hank"), tokens_per_day=0)
# vera has a daily and a monthly budget, walt a monthly one only
Budget.objects.create(user=User.objects.get(username="vera"), tokens_per_day=5000, tokens_per_month=100000)
Budget.objects.create(user=User.objects.get(username="walt"), tokens_per_month=2000)
"""


@pytest.fixture(scope="module")
def site_setup():
    return SETUP


# ---------------------------------------------------------------------------- tests


def test_it_signs_in_streams_a_reply_and_shows_its_stats(open_page, llm, gates):
    page = open_page(None)
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("composer")).to_be_focused()
    expect(page.locator(".who")).to_have_text("alice")

    usage = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    held, gate = gated(["Hello", " there,", " streaming", " world."], usage=usage)
    gates.append(gate)
    llm.queue(held)
    send(page, "Say hello")
    expect(page.locator(USER_TEXTS)).to_have_text(["Say hello"])
    reply = last_reply(page)
    expect(reply.locator("[data-notice]")).to_be_visible()
    expect(reply.locator("[data-notice]")).to_contain_text("Waiting for first token")
    expect(page.get_by_test_id("stop")).to_be_visible()
    expect(page.get_by_test_id("send")).to_be_hidden()
    # Stop appears under the pointer that pressed Send: it must stay legible when hovered.
    page.get_by_test_id("stop").hover()
    assert contrast(page.get_by_test_id("stop")) >= 4.5

    gate.release(1 + 2)
    expect(body(reply)).to_have_text("Hello there,")
    expect(reply.locator("[data-notice]")).to_be_hidden()
    expect(reply).to_have_attribute("data-status", "streaming")
    gate.release(1)
    expect(body(reply)).to_have_text("Hello there, streaming")
    shot(page, "streaming")

    gate.open()
    wait_finished(page)
    expect(body(reply)).to_have_text("Hello there, streaming world.")
    expect(reply.get_by_test_id("message-status")).to_be_hidden()
    stats = reply.get_by_test_id("message-stats")
    timing = r"first token [\d.]+ m?s · [\d.]+ m?s total"
    if COUNTING:
        expect(stats).to_have_text(re.compile(rf"^9 prompt · 6 completion tokens · {timing} · [\d.]+ tok/s$"))
    else:  # no vocabulary, no counts (the provider's usage is not shown in their place)
        expect(stats).to_have_text(re.compile(rf"^{timing}$"))
    # The sidebar lists the new chat, titled from the first message.
    expect(page.get_by_test_id("conversation-item")).to_have_text(["Say hello"])
    expect(page.get_by_test_id("conversation-title")).to_have_text("Say hello")
    shot(page, "finished-with-stats")


def test_it_stops_a_reply_with_the_button_and_with_escape(open_page, llm, gates):
    page = open_page("bob")
    held, gate = gated(["Partial", " answer", " never", " finished"])
    gates.append(gate)
    llm.queue(held)
    send(page, "Tell me a long story")
    gate.release(1 + 2)
    reply = last_reply(page)
    expect(body(reply)).to_have_text("Partial answer")
    page.get_by_test_id("stop").click()
    wait_finished(page, "cancelled")
    expect(body(reply)).to_have_text("Partial answer")
    expect(reply.get_by_test_id("message-status")).to_have_text("Stopped")
    shot(page, "stopped")

    held, gate = gated(["Second", " try", " also", " cut"])
    gates.append(gate)
    llm.queue(held)
    send(page, "Another one")
    gate.release(1 + 1)
    reply = last_reply(page)
    expect(body(reply)).to_have_text("Second")
    expect(page.get_by_test_id("composer")).to_be_focused()
    page.keyboard.press("Escape")
    wait_finished(page, "cancelled")
    expect(body(reply)).to_have_text("Second")
    expect(reply.get_by_test_id("message-status")).to_have_text("Stopped")
    expect(page.locator(REPLIES)).to_have_count(2)


def test_it_regenerates_a_reply(open_page, llm):
    page = open_page("carol")
    llm.queue(reply(["First", " answer"]))
    send(page, "Question")
    wait_finished(page)
    expect(body(last_reply(page))).to_have_text("First answer")

    llm.queue(reply(["Second", " answer"]))
    last_reply(page).get_by_test_id("regenerate").click()
    expect(body(last_reply(page))).to_have_text("Second answer")
    wait_finished(page)
    expect(page.locator(REPLIES)).to_have_count(1)
    expect(page.locator(USER_TEXTS)).to_have_text(["Question"])
    # The model was asked the same question again.
    assert llm.requests[-1]["json"]["messages"][-1] == {"role": "user", "content": "Question"}
    page.reload()
    expect(body(last_reply(page))).to_have_text("Second answer")
    expect(page.locator(REPLIES)).to_have_count(1)


def test_a_reload_mid_reply_resumes_it_exactly(open_page, llm, gates):
    page = open_page("otto")
    pieces = ["Alpha ", "Bravo ", "Charlie ", "Delta ", "Echo ", "Foxtrot."]
    held, gate = gated(pieces)
    gates.append(gate)
    llm.queue(held)
    send(page, "Spell it")
    gate.release(1 + 3)
    expect(body(last_reply(page))).to_have_text("Alpha Bravo Charlie")

    page.reload()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(body(reply)).to_have_text("Alpha Bravo Charlie")
    expect(page.get_by_test_id("stop")).to_be_visible()
    gate.release(1)
    expect(body(reply)).to_have_text("Alpha Bravo Charlie Delta")
    gate.open()
    wait_finished(page)
    expect(body(reply)).to_have_text("Alpha Bravo Charlie Delta Echo Foxtrot.")
    assert body(reply).inner_text() == "".join(pieces)
    expect(page.locator(REPLIES)).to_have_count(1)


HOSTILE_REPLY = [
    "<script>window.__pwned=1</script>\n\n",
    '<img src=x onerror="window.__pwned=2">\n\n',
    "[click](javascript:window.__pwned=3)\n\n",
    '<a href="javascript:window.__pwned=4">raw link</a> <b onmouseover="window.__pwned=5">bold</b>\n\n',
    '<iframe src="javascript:window.__pwned=6"></iframe>\n\n',
    "![pic](javascript:window.__pwned=7) [ok](https://example.com/)\n",
]
HOSTILE_USER = '<img src=x onerror="window.__pwned=8"><script>window.__pwned=9</script> [u](javascript:window.__pwned=10)'


def assert_inert(page) -> None:
    assert page.evaluate("window.__pwned") is None
    messages = page.locator("#messages")
    for selector in ("script", "img", "iframe", "[onerror]", "[onmouseover]", 'a[href^="javascript:" i]'):
        assert messages.locator(selector).count() == 0, selector
    assert page.locator('a[href^="javascript:" i], iframe, [onerror]').count() == 0


def test_hostile_replies_and_user_text_stay_inert(open_page, llm, gates):
    page = open_page("erin")
    held, gate = gated(HOSTILE_REPLY)
    gates.append(gate)
    llm.queue(held)
    send(page, HOSTILE_USER)
    expect(page.locator(USER_TEXTS)).to_have_text([HOSTILE_USER])
    gate.release(1 + 3)
    reply = last_reply(page)
    expect(body(reply)).to_contain_text("javascript:window.__pwned=3")  # as text, while streaming
    assert_inert(page)
    gate.open()
    wait_finished(page)
    # Rendered by the server: raw HTML shows as text, the safe link survives, nothing runs.
    expect(body(reply)).to_contain_text("<script>window.__pwned=1</script>")
    expect(body(reply)).to_contain_text('<img src=x onerror="window.__pwned=2">')
    expect(body(reply).locator('a[href="https://example.com/"]')).to_have_text("ok")
    body(reply).get_by_text("click").first.click()
    page.mouse.move(5, 5)
    assert_inert(page)
    page.reload()
    expect(body(last_reply(page))).to_contain_text("<script>window.__pwned=1</script>")
    expect(page.locator(USER_TEXTS)).to_have_text([HOSTILE_USER])
    expect(page.get_by_test_id("conversation-item").first).to_contain_text("<img src=x")
    assert_inert(page)


def test_it_renames_deletes_and_searches_chats(open_page):
    page = open_page("dana", "/new/")
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_text(["Garden plans", "Tax questions", "Trip to Lisbon"])  # newest first

    search = page.get_by_test_id("search")
    search.fill("nata")  # in a message, not a title
    search.press("Enter")
    expect(items).to_have_text(["Trip to Lisbon"])
    search.fill("tax")
    search.press("Enter")
    expect(items).to_have_text(["Tax questions"])
    search.fill("no such words")
    search.press("Enter")
    expect(items).to_have_count(0)
    expect(page.locator(".conv-empty")).to_have_text("No chats match.")
    page.get_by_role("link", name="clear").click()
    expect(items).to_have_count(3)

    items.filter(has_text="Tax questions").get_by_role("link").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Tax questions")
    page.get_by_test_id("menu").click()  # the header's ⋯ menu (issue #14)
    page.get_by_test_id("rename").click()
    expect(page.get_by_test_id("rename-input")).to_be_visible()
    page.get_by_test_id("rename-input").fill("Taxes 2025")
    page.get_by_test_id("rename-submit").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Taxes 2025")
    expect(items).to_have_text(["Garden plans", "Taxes 2025", "Trip to Lisbon"])

    page.get_by_test_id("menu").click()
    page.get_by_test_id("delete").click()
    dialog = page.locator("#delete-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("“Taxes 2025” and all its messages will be deleted")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(items).to_have_count(3)
    page.get_by_test_id("menu").click()
    page.get_by_test_id("delete").click()
    page.get_by_test_id("delete-confirm").click()
    expect(items).to_have_text(["Garden plans", "Trip to Lisbon"])


def test_the_home_page_starts_a_new_chat_instead_of_reopening_the_last(open_page, llm):
    page = open_page("yuri")
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_text(["Last week's chat"])  # the old chat is one click away
    expect(page.get_by_test_id("conversation-title")).to_have_text("New chat")
    expect(page.locator(USER_MESSAGES)).to_have_count(0)

    llm.queue(reply(["A fresh answer."]))
    send(page, "A new question")
    wait_finished(page)
    expect(page.locator(USER_TEXTS)).to_have_text(["A new question"])
    expect(items).to_have_count(2)
    assert llm.requests[-1]["json"]["messages"][-1]["content"] == "A new question"
    assert "An old question" not in json.dumps(llm.requests[-1]["json"]["messages"])

    items.filter(has_text="Last week's chat").get_by_role("link").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Last week's chat")
    expect(page.locator(USER_TEXTS)).to_have_text(["An old question"])  # left as it was


def expect_error_page(page, heading: str) -> None:
    """An error page in the site's look (its stylesheet, a card) with a way back to the chats."""
    expect(page.get_by_test_id("error-heading")).to_have_text(heading)
    expect(page.locator("main.card")).to_be_visible()
    expect(page.locator("main.card")).to_have_css("border-radius", re.compile(r"[1-9]"))  # chat.css applied
    back = page.get_by_test_id("error-back")
    expect(back).to_be_visible()
    back.click()


def test_error_pages_use_the_site_layout_and_lead_back_to_the_chats(open_page, site, server):
    # A deleted chat's URL: 404.
    gone = site.create_conversation("zeno", title="Deleted chat")
    site.shell(f"from chat.models import Conversation\nConversation.objects.filter(pk={gone}).delete()")
    page = open_page("zeno", f"/c/{gone}/")
    expect_error_page(page, "Nothing here")
    expect(page).to_have_url(server.url("/"))
    expect(page.get_by_test_id("composer")).to_be_visible()

    # Staff without the permission a page checks: 403.
    site.shell(
        "from django.contrib.auth.models import User\nUser.objects.filter(username='zeno').update(is_staff=True)"
    )
    page = open_page("zeno", "/admin/chat/message/usage/")
    expect_error_page(page, "Not allowed")
    expect(page.get_by_test_id("composer")).to_be_visible()

    # A form sent with a stale CSRF token: 403 too, saying what to do.
    page = open_page(None, "/accounts/login/")
    page.locator('input[name="csrfmiddlewaretoken"]').evaluate("e => e.value = 'x'.repeat(64)")
    page.get_by_label("Username").fill("zeno")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("error-heading")).to_have_text("This form has expired")
    expect(page.get_by_test_id("error-back")).to_be_visible()

    # Sign-up while it is closed (invite only, the default).
    page = open_page(None, "/accounts/signup/")
    expect(page.get_by_test_id("signup-closed")).to_contain_text("Ask your admin for an invite link")
    page.get_by_role("link", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


def test_a_server_error_page_uses_the_site_layout(browser, tmp_path):
    """500.html is rendered without a request context: here the database lost a table."""
    import sqlite3

    site = Site(tmp_path)
    site.migrate()
    site.create_user("sol", PASSWORD)
    with site.server() as server:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(WAIT_MS)
        try:
            context.add_cookies(
                [{"name": "sessionid", "value": server.login("sol", PASSWORD), "url": server.origin}]
            )
            with sqlite3.connect(site.data_dir / "db.sqlite3") as db:
                db.execute("DROP TABLE chat_conversation")
            page = context.new_page()
            response = page.goto(server.url("/"))
            assert response.status == 500
            expect(page.get_by_test_id("error-heading")).to_have_text("Something went wrong")
            expect(page.locator("main.card")).to_have_css("border-radius", re.compile(r"[1-9]"))
            expect(page.get_by_test_id("error-back")).to_have_attribute("href", "/")
        finally:
            context.close()


def test_enter_sends_and_shift_enter_adds_a_line(open_page, llm):
    page = open_page("ivan")
    composer = page.get_by_test_id("composer")
    composer.click()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(composer).to_have_value("line one\nline two")
    expect(page.locator(USER_MESSAGES)).to_have_count(0)

    llm.queue(reply(["Two lines received."]))
    page.keyboard.press("Enter")
    expect(page.locator(USER_MESSAGES)).to_have_count(1)
    assert body(page.locator(USER_MESSAGES).first).inner_text() == "line one\nline two"
    expect(composer).to_have_value("")
    wait_finished(page)
    expect(body(last_reply(page))).to_have_text("Two lines received.")
    assert llm.requests[-1]["json"]["messages"][-1]["content"] == "line one\nline two"


def test_an_upstream_error_is_shown_in_plain_words_with_a_retry(open_page, llm, server):
    page = open_page("judy")
    llm.queue(error_reply(401, f"Incorrect API key provided: {TEST_API_KEY[:8]}***"))
    send(page, "Are you there?")
    failed = last_reply(page)
    wait_finished(page, "failed")
    error = failed.locator("[data-error]")
    expect(error).to_be_visible()
    expect(error).to_contain_text("rejected the API key")
    expect(failed.get_by_test_id("message-status")).to_have_text("Failed")
    expect(failed.get_by_test_id("retry")).to_be_visible()
    expect(failed.get_by_test_id("regenerate")).to_be_hidden()  # Retry is the one way to try again
    assert TEST_API_KEY not in page.content()
    shot(page, "error")

    llm.queue(reply(["Back", " again."]))
    failed.get_by_test_id("retry").click()
    expect(body(last_reply(page))).to_have_text("Back again.")
    wait_finished(page)
    expect(page.locator(REPLIES)).to_have_count(1)
    expect(last_reply(page).locator("[data-error]")).to_be_hidden()


def test_the_retry_notice_punctuates_the_providers_words_once(open_page, llm, gates):
    """A provider's message may end with or without a period, inside brackets or not: the
    notice reads as one sentence either way ("…not found).). Retrying…" was issue #14)."""
    page = open_page("nora")
    unavailable = error_reply(503, "Service unavailable (model not found).")
    unavailable.headers["retry-after"] = "2"  # long enough to read the first notice
    llm.queue(unavailable)
    llm.queue(error_reply(503, "overloaded"))  # no end mark of its own
    held, gate = gated(["Third time lucky."])
    gates.append(gate)
    llm.queue(held)
    send(page, "Hello?")
    notice = last_reply(page).locator("[data-notice]")
    expect(notice).to_have_text(re.compile(r"\(model not found\)\. Retrying in 2 s — attempt 1…$"))
    # The second attempt's notice stays up while the third attempt is held before any text.
    expect(notice).to_have_text(re.compile(r"\(HTTP 503\): overloaded\. Retrying in \d s — attempt 2…$"))
    gate.open()
    wait_finished(page)
    expect(body(last_reply(page))).to_have_text("Third time lucky.")
    expect(notice).to_be_hidden()


def test_the_phone_layout_can_send_and_open_the_chat_list(open_page, llm):
    page = open_page("ken", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    composer = page.get_by_test_id("composer")
    expect(composer).to_be_visible()
    box = composer.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
    expect(page.locator("#sidebar")).not_to_be_in_viewport()

    llm.queue(reply(["A **short** reply that fits on a phone screen, with a list:\n\n- one\n- two\n"]))
    composer.fill("Hi from my phone")
    page.get_by_test_id("send").tap()
    wait_finished(page)
    expect(body(last_reply(page)).locator("strong")).to_have_text("short")
    send_box = page.get_by_test_id("send").bounding_box()
    assert send_box and send_box["x"] + send_box["width"] <= 390
    shot(page, "phone")

    page.get_by_role("button", name="Show chats").tap()
    expect(page.locator("#sidebar")).to_be_in_viewport()
    # Fully slid in (a 0.2 s transition), over the page rather than beside it.
    # A function, not an expression string: Playwright evals a string in the page, which the
    # page's Content-Security-Policy (no 'unsafe-eval') rightly refuses.
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().left === 0", timeout=WAIT_MS
    )
    expect(page.get_by_test_id("conversation-item")).to_have_text(["Hi from my phone"])
    shot(page, "phone-sidebar")


def test_dark_mode_follows_the_system_setting(open_page, llm):
    page = open_page("lena", color_scheme="dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 29)"
    llm.queue(
        reply(
            [
                'Here is code:\n\n```python\ndef greet(name):\n    return f"Hello {name}"\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n'
            ]
        )
    )
    send(page, "Show me some code")
    wait_finished(page)
    expect(body(last_reply(page)).locator("pre")).to_contain_text("def greet(name):")
    shot(page, "dark")


def test_trimmed_history_and_the_budget_are_shown(open_page, llm, site):
    if not COUNTING:
        pytest.skip(f"no tiktoken vocabularies in {VOCABULARIES}: no token counts, so no trimming")
    page = open_page("frank")
    page.get_by_test_id("conversation-item").filter(has_text="Long chat").get_by_role("link").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Long chat")
    held, gate = gated(["Short", " answer."])
    llm.queue(held)
    send(page, "And now?")
    budget = page.get_by_test_id("budget")
    expect(budget).to_have_text("50,000 tokens left today")
    reply = last_reply(page)
    expect(reply.get_by_test_id("trimmed-note")).to_have_text(
        re.compile(r"^\d+ earlier messages were left out to fit the model's context window\.$")
    )
    gate.open()
    wait_finished(page)
    expect(reply.get_by_test_id("trimmed-note")).to_be_visible()
    # What the reply used comes off the budget shown.
    expect(budget).not_to_have_text("50,000 tokens left today")
    expect(budget).to_have_text(re.compile(r"^\d\d,\d{3} tokens left today$"))
    shot(page, "trimmed-and-budget")
    sent = llm.requests[-1]["json"]["messages"]
    assert len(sent) < 6 and sent[-1]["content"] == "And now?"


def test_the_budget_line_is_worded_on_load_as_after_a_reply(open_page):
    page = open_page("vera")
    expect(page.get_by_test_id("budget")).to_have_text("5,000 tokens left today · 100,000 this month")
    page = open_page("walt")
    expect(page.get_by_test_id("budget")).to_have_text("2,000 tokens left this month")
    page = open_page("alice")  # no budget, no line
    expect(page.get_by_test_id("composer")).to_be_focused()
    expect(page.get_by_test_id("budget")).to_be_hidden()


def test_budget_and_send_rate_refusals_are_plain_words(open_page, llm):
    page = open_page("hank")
    send(page, "Anything left?")
    toast = page.get_by_test_id("toast")
    expect(toast).to_have_text("You have used today's token budget. It resets at midnight UTC.")
    expect(page.get_by_test_id("composer")).to_have_value("Anything left?")
    expect(page.locator('#messages [data-testid="message"]')).to_have_count(0)
    expect(page.get_by_test_id("send")).to_be_visible()

    page = open_page("gina")
    llm.queue(reply(["One is fine."]))
    send(page, "First")
    wait_finished(page)
    send(page, "Second, too soon")
    toast = page.get_by_test_id("toast")
    expect(toast).to_have_text(re.compile(r"You can send 1 messages? a minute"))
    expect(page.get_by_test_id("composer")).to_have_value("Second, too soon")
    expect(page.locator(USER_TEXTS)).to_have_text(["First"])
    expect(page.locator(REPLIES)).to_have_count(1)


def test_the_offline_banner_comes_and_goes_with_the_server(open_page, llm, server):
    page = open_page("mona")
    llm.queue(reply(["Online."]))
    send(page, "Before")
    wait_finished(page)
    banner = page.get_by_test_id("offline-banner")
    expect(banner).to_be_hidden()

    server.kill()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Offline")
    send(page, "While offline")
    expect(page.get_by_test_id("toast")).to_contain_text("You're offline")
    expect(page.get_by_test_id("composer")).to_have_value("While offline")
    shot(page, "offline")

    server.start()
    expect(banner).to_be_hidden(timeout=30_000)  # backoff: at most ~8 s after a short outage
    llm.queue(reply(["Back online."]))
    page.get_by_test_id("send").click()
    wait_finished(page)
    expect(body(last_reply(page))).to_have_text("Back online.")
    expect(page.locator(USER_TEXTS)).to_have_text(["Before", "While offline"])


def test_the_demo_model_is_labelled_when_no_provider_is_configured(browser, tmp_path):
    site = Site(tmp_path, env={"CHAT_DEMO_DELAY": "0.002"})
    site.migrate()
    site.create_user("demo", PASSWORD)
    with site.server() as server:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            context.add_cookies(
                [{"name": "sessionid", "value": server.login("demo", PASSWORD), "url": server.origin}]
            )
            page = context.new_page()
            page.goto(server.url("/"))
            label = page.get_by_test_id("demo-label")
            expect(label).to_be_visible()
            expect(label).to_contain_text("Demo model — not a real LLM.")
            expect(label).to_contain_text("OPENAI_API_KEY")
            send(page, "Hello demo")
            wait_finished(page)
            expect(body(last_reply(page))).not_to_be_empty()
            shot(page, "demo")
        finally:
            context.close()


def test_code_blocks_have_a_copy_button(open_page, llm, server):
    page = open_page("pia", permissions=["clipboard-read", "clipboard-write"])
    llm.queue(reply(["Run this:\n\n```python\n", "print('hi')\n", "```\n\nand that is all."]))
    send(page, "Show me code")
    wait_finished(page)
    button = last_reply(page).get_by_test_id("copy-code")
    expect(button).to_have_count(1)
    button.click()
    expect(page.get_by_text("Code copied.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"
    page.reload()  # server-rendered replies get the button too
    expect(last_reply(page).get_by_test_id("copy-code")).to_have_count(1)


def test_the_last_message_can_be_edited_and_sent_again(open_page, llm):
    page = open_page("quinn")
    llm.queue(reply(["Cats", " purr."]))
    send(page, "Tell me about cats")
    wait_finished(page)
    edit = page.locator(USER_TEXTS).last.locator("..").get_by_test_id("edit")
    expect(edit).to_be_visible()
    edit.click()
    # In place (issue #14): the message itself becomes the editor; the composer stays empty.
    editor = page.locator(USER_MESSAGES).last.get_by_test_id("edit-input")
    expect(editor).to_have_value("Tell me about cats")
    expect(page.get_by_test_id("composer")).to_have_value("")
    editor.fill("Tell me about dogs")
    llm.queue(reply(["Dogs", " bark."]))
    editor.press("Enter")
    expect(body(last_reply(page))).to_have_text("Dogs bark.")
    wait_finished(page)
    expect(page.locator(USER_TEXTS)).to_have_text(["Tell me about dogs"])  # the old one is a version now
    expect(page.locator(REPLIES)).to_have_count(1)
    assert llm.requests[-1]["json"]["messages"][-1] == {"role": "user", "content": "Tell me about dogs"}
    page.reload()
    expect(page.locator(USER_TEXTS)).to_have_text(["Tell me about dogs"])
    expect(body(last_reply(page))).to_have_text("Dogs bark.")


def test_markdown_is_rendered_while_the_reply_streams(open_page, llm, gates):
    page = open_page("rita")
    held, gate = gated(["## Steps 🐍\n\n", "1. **first**\n2. second\n\n", "and then", " done."])
    gates.append(gate)
    llm.queue(held)
    send(page, "Steps?")
    gate.release(1 + 3)  # the role chunk and three pieces; the last waits
    reply = last_reply(page)
    expect(body(reply).locator("h2")).to_have_text("Steps 🐍")  # rendered before the reply is done
    expect(body(reply).locator("ol li strong")).to_have_text("first")
    expect(body(reply)).to_contain_text("and then")  # the unfinished block is still text
    assert "## Steps" not in body(reply).inner_text()  # the raw Markdown was replaced, not doubled
    expect(reply).to_have_attribute("data-status", "streaming")
    gate.open()
    wait_finished(page)
    expect(body(reply)).to_contain_text("and then done.")
    expect(body(reply).locator("h2")).to_have_count(1)


def test_scrolling_up_pauses_following_and_jump_to_bottom_resumes_it(open_page, llm, gates):
    page = open_page("sam", viewport={"width": 900, "height": 600})
    held, gate = gated([f"Line {n} of a long answer.\n\n" for n in range(80)] + ["The end."])
    gates.append(gate)
    llm.queue(held)
    send(page, "Write a lot")
    gate.release(1 + 40)
    reply = last_reply(page)
    expect(body(reply)).to_contain_text("Line 39")
    expect(page.get_by_test_id("message-list")).to_have_attribute("aria-live", "polite")  # announced politely
    page.mouse.move(450, 300)
    page.mouse.wheel(0, -2000)  # the user scrolls up to read
    jump = page.get_by_test_id("jump-to-bottom")
    expect(jump).to_be_visible()
    gate.open()  # more text arrives; the view must stay where the user put it
    wait_finished(page)
    below = "(() => { const s = document.getElementById('scroller'); return s.scrollHeight - s.scrollTop - s.clientHeight; })()"
    assert page.evaluate(below) > 200  # still where the user scrolled to
    jump.click()
    expect(jump).to_be_hidden()
    expect(page.get_by_test_id("composer")).to_be_focused()


def test_the_model_and_system_prompt_are_chosen_per_conversation(open_page, llm):
    page = open_page("tom")
    llm.queue(reply(["Hello."]))
    send(page, "First")
    wait_finished(page)
    page.get_by_test_id("model-picker").select_option("tiny-window")  # a model from the admin, in the header
    page.get_by_test_id("system-prompt-button").click()
    dialog = page.locator("#settings-dialog")
    dialog.locator("textarea[name=system_prompt]").fill("Answer in French.")
    dialog.get_by_test_id("settings-submit").click()
    expect(dialog).to_be_hidden()
    llm.queue(reply(["Bonjour."]))
    send(page, "Second")
    wait_finished(page)
    request = llm.requests[-1]["json"]
    assert request["model"] == "tiny-window"
    assert request["messages"][0] == {"role": "system", "content": "Answer in French."}


def test_a_ten_thousand_token_reply_arrives_whole_and_rendered(open_page, llm):
    page = open_page("uma")
    pieces = [f"w{n} " + ("\n\n" if n % 200 == 199 else "") for n in range(10_000)]
    llm.queue(reply(pieces))
    send(page, "Write ten thousand words")
    wait_finished(page)
    text = body(last_reply(page)).inner_text()
    assert text.count("w5000 ") == 1 and "w9999" in text and "w0 " in text  # nothing lost, nothing doubled
    expect(body(last_reply(page)).locator("p")).to_have_count(50)


def test_signing_out_in_one_tab_sends_the_other_tab_to_the_sign_in_page(browser, server, site, llm, gates):
    conversation_id = site.create_conversation("alice")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    try:
        # A session of its own: the module's shared sessions stay signed in for other tests.
        context.add_cookies(
            [{"name": "sessionid", "value": server.login("alice", PASSWORD), "url": server.origin}]
        )
        chatting = context.new_page()
        chatting.goto(server.url(f"/c/{conversation_id}/"))  # a conversation: its socket is open
        llm.queue(reply(["Hello."]))
        send(chatting, "Hi")  # a reply streamed: the socket is open
        wait_finished(chatting)
        other = context.new_page()
        other.goto(server.url("/"))
        other.get_by_role("button", name="Sign out").click()
        expect(other).to_have_url(re.compile(r"/accounts/login/"))
        # The first tab's socket was closed with signed_out (4401), and the page reloaded.
        expect(chatting).to_have_url(re.compile(r"/accounts/login/"))
    finally:
        context.close()


def test_two_tabs_sending_the_same_words_each_know_their_own(browser, server, site, llm, gates):
    """A tab knows its reply by the id it sent, not by its words: a tab whose send is refused
    as busy because another tab's identical send got there first gets its words back."""
    conversation_id = site.create_conversation("xena")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    context.add_cookies([{"name": "sessionid", "value": site.sessions["xena"], "url": server.origin}])
    # Tab B's link to the server: its send frames wait in `held` while `holding` (a slow link).
    link = {"holding": False, "held": [], "server": None}

    def slow_sends(ws) -> None:
        link["server"] = ws.connect_to_server()

        def from_page(message) -> None:
            if link["holding"] and '"type":"send"' in str(message):
                link["held"].append(message)
            else:
                link["server"].send(message)

        ws.on_message(from_page)

    try:
        tab_a, tab_b = context.new_page(), context.new_page()
        tab_b.route_web_socket(re.compile(r"/ws/chat/"), slow_sends)
        for tab in (tab_a, tab_b):
            tab.goto(server.url(f"/c/{conversation_id}/"))

        def sent(tab, count: int):
            """`send` the words, and the user message the tab drew for them at once."""
            send(tab, "Same words")
            expect(tab.locator(USER_MESSAGES)).to_have_count(count)
            return tab.locator(USER_MESSAGES).nth(count - 1).element_handle()

        def shown_as_own(tab, drawn, count: int) -> str:
            """The message the tab drew when sending is the saved one, shown once."""
            expect(tab.locator(USER_MESSAGES).nth(count - 1)).to_have_attribute(
                "data-message-id", re.compile(r"\d")
            )
            message_id = drawn.get_attribute("data-message-id")
            assert drawn.evaluate("e => e.isConnected")
            expect(tab.locator(f'{USER_MESSAGES}[data-message-id="{message_id}"]')).to_have_count(1)
            return message_id

        # Tab A sends; tab B, idle, shows it arriving from elsewhere.
        llm.queue(reply(["First."]))
        mine = shown_as_own(tab_a, sent(tab_a, 1), 1)
        for tab in (tab_a, tab_b):
            wait_finished(tab)
            expect(tab.locator(USER_MESSAGES)).to_have_count(1)
            expect(tab.locator(USER_MESSAGES).first).to_have_attribute("data-message-id", mine)

        # Tab B sends the same words, but its frame is slow: tab A's identical send starts
        # first, and its `start` reaches tab B while B still waits for its own.
        link["holding"] = True
        slow = sent(tab_b, 2)
        link["holding"] = False
        assert len(link["held"]) == 1
        held_reply, gate = gated(["Second."])
        gates.append(gate)
        llm.queue(held_reply)
        theirs = shown_as_own(tab_a, sent(tab_a, 2), 2)
        expect(tab_b.locator(f'{USER_MESSAGES}[data-message-id="{theirs}"]')).to_have_count(1)
        link["server"].send(link["held"].pop())  # B's send arrives while A's reply streams: refused as busy
        toast = tab_b.get_by_test_id("toast")
        expect(toast).to_have_text(
            "A reply is already being written in this chat. Stop it or wait for it to finish."
        )
        expect(tab_b.get_by_test_id("composer")).to_have_value("Same words")  # B's words come back
        assert not slow.evaluate("e => e.isConnected")  # what B drew for its refused send is gone
        gate.open()
        for tab in (tab_a, tab_b):
            wait_finished(tab)
            expect(tab.locator(USER_TEXTS)).to_have_text(["Same words"] * 2)

        # Tab B sends them again, now on time: its own message once; tab A sees it arrive.
        llm.queue(reply(["Third."]))
        tab_b.get_by_test_id("send").click()
        expect(tab_b.locator(USER_MESSAGES)).to_have_count(3)
        again = shown_as_own(tab_b, tab_b.locator(USER_MESSAGES).nth(2).element_handle(), 3)
        for tab in (tab_a, tab_b):
            wait_finished(tab)
            expect(body(last_reply(tab))).to_have_text("Third.")
            expect(tab.locator(USER_TEXTS)).to_have_text(["Same words"] * 3)
            expect(tab.locator(USER_MESSAGES).last).to_have_attribute("data-message-id", again)
    finally:
        context.close()


# The page's websocket opens only when the test says so: a message typed while the page is
# still connecting must wait for the socket, not be refused as "offline".
HOLD_SOCKET_OPEN = """
(() => {
  const Real = window.WebSocket;
  const held = [];
  window.__holding = true;
  window.__openSockets = () => { window.__holding = false; for (const go of held.splice(0)) go(); };
  class Held extends Real {
    constructor(...args) {
      super(...args);
      this.__opened = false;
      super.addEventListener("open", (event) => {
        const go = () => { this.__opened = true; this.__onopen?.(event); };
        if (window.__holding) held.push(go); else go();
      });
    }
    get readyState() {
      const real = super.readyState;
      return real === Real.OPEN && !this.__opened ? Real.CONNECTING : real;
    }
    get onopen() { return this.__onopen; }
    set onopen(handler) { this.__onopen = handler; }
  }
  window.WebSocket = Held;
})();
"""


def test_a_message_sent_while_the_page_is_still_connecting_goes_once_it_connects(browser, server, site, llm):
    conversation_id = site.create_conversation("pat")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    try:
        context.add_cookies([{"name": "sessionid", "value": site.sessions["pat"], "url": server.origin}])
        context.add_init_script(HOLD_SOCKET_OPEN)
        page = context.new_page()
        page.goto(server.url(f"/c/{conversation_id}/"))
        expect(page.get_by_test_id("composer")).to_be_focused()  # the page's scripts run
        llm.queue(reply(["Here", " already."]))
        send(page, "Typed as the page loaded")
        expect(page.locator(USER_TEXTS)).to_have_text(["Typed as the page loaded"])
        expect(page.get_by_test_id("toast")).to_be_hidden()  # not refused as offline
        expect(page.get_by_test_id("composer")).to_have_value("")
        page.evaluate("window.__openSockets()")
        wait_finished(page)
        expect(body(last_reply(page))).to_have_text("Here already.")
        assert llm.requests[-1]["json"]["messages"][-1] == {
            "role": "user",
            "content": "Typed as the page loaded",
        }
        page.reload()
        expect(page.locator(USER_TEXTS)).to_have_text(["Typed as the page loaded"])
    finally:
        context.close()


def test_send_waits_for_the_page_scripts_so_an_early_click_cannot_lose_the_message(
    browser, server, site, llm
):
    """Before static/chat/chat.js runs, a click on Send would submit the form natively: a
    navigation that drops the typed message. Send is enabled only once the page can send."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    held = []
    try:
        context.add_cookies([{"name": "sessionid", "value": site.sessions["pat"], "url": server.origin}])
        context.route(re.compile(r"/static/chat/chat[.\w]*\.js$"), lambda route: held.append(route))
        page = context.new_page()
        page.goto(server.url("/new/"), wait_until="commit")  # "load" would wait for the held script
        expect(page.get_by_test_id("send")).to_be_disabled()
        page.get_by_test_id("composer").fill("Typed before the scripts ran")
        page.get_by_test_id("send").click(force=True)  # a click on the disabled button: nothing
        expect(page).to_have_url(re.compile(r"/new/$"))
        expect(page.get_by_test_id("composer")).to_have_value("Typed before the scripts ran")
        assert held, "the page asked for chat.js"
        for route in held:
            route.continue_()
        llm.queue(reply(["Received."]))
        page.get_by_test_id("send").click()  # waits until enabled
        wait_finished(page)
        expect(page.locator(USER_TEXTS)).to_have_text(["Typed before the scripts ran"])
    finally:
        context.close()

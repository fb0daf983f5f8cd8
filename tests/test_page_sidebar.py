"""The sidebar (date groups, search as you type, each chat's menu), the quiet stats line and
the sign-in page's first-run hint, in a real browser (issue #14; fixtures: tests/browser.py)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    REPLIES,
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

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = """
from datetime import timedelta
from django.utils import timezone

now = timezone.now()
def aged(conversation, **ago):
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=now - timedelta(**ago))

# alice: one chat for each date group
aged(chat("alice", "Fresh idea", "q", "a"), seconds=0)
aged(chat("alice", "Since yesterday", "q", "a"), days=1)
aged(chat("alice", "Five days on", "q", "a"), days=5)
aged(chat("alice", "Three weeks back", "q", "a"), days=20)
aged(chat("alice", "Long ago", "q", "a"), days=40)
result["forty_days_ago"] = (now - timedelta(days=40)).isoformat()
# erin: a chat from today and one from long ago, which a new reply brings back
aged(chat("erin", "Fresh idea", "q", "a"), seconds=0)
aged(chat("erin", "Long ago", "q", "a"), days=40)

# bob (search), carol, frank and gina (the menu): three chats each, "Garden plans" the newest
for name in ("bob", "carol", "frank", "gina"):
    chat(name, "Trip to Lisbon", "Where do I find the best pastel de nata?", "Try Belem.")
    chat(name, "Tax questions", "Which deductions can I claim?", "It depends.")
    chat(name, "Garden plans", "When do I plant tomatoes?", "After the last frost.")
result["carol_garden"] = Conversation.objects.get(user__username="carol", title="Garden plans").pk
result["gina_garden"] = Conversation.objects.get(user__username="gina", title="Garden plans").pk

# dana: a finished reply with all its figures
c = chat("dana", "Timed", "How long?")
Message.objects.create(
    conversation=c, role="assistant", content="This long.", status="finished",
    prompt_tokens=9, completion_tokens=6, ttft_ms=200, duration_ms=1234,
)
result["dana_timed"] = c.pk

# The first admin, as manage.py bootstrap leaves it: its password kept in DATA_DIR.
User.objects.create_superuser("admin", "", "first-run-password-1")
(settings.DATA_DIR / "initial-admin-password").write_text("first-run-password-1\\n")
"""


@pytest.fixture(scope="module")
def site_setup():
    return SETUP


ITEMS = '[data-testid="conversation-item"]'
GROUPS = '[data-testid="conversation-group"]'


# The real socket, watched: a message typed before it opens is refused as "offline".
WATCH_SOCKET = """
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    this.addEventListener("open", () => (document.documentElement.dataset.socket = "open"));
  }
};
"""


def open_chat(page, url: str) -> None:
    """Go to a chat and wait until its websocket is open, so Send sends."""
    page.add_init_script(WATCH_SOCKET)
    page.goto(url)
    expect(page.locator("html")).to_have_attribute("data-socket", "open")


def mark_window(page) -> None:
    """Set a marker that a page load would wipe out."""
    page.evaluate("window.__sameDocument = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


# ---------------------------------------------------------------------------- date groups


def test_it_groups_chats_by_last_activity_in_the_browsers_time_zone(open_page, site):
    zone = "America/New_York"
    page = open_page("alice", "/", timezone_id=zone)
    month = datetime.fromisoformat(site.sessions["forty_days_ago"]).astimezone(ZoneInfo(zone))
    groups = page.locator(GROUPS)
    expect(groups.locator("h2")).to_have_text(
        ["Today", "Yesterday", "Previous 7 days", "Previous 30 days", month.strftime("%B %Y")]
    )
    expect(groups.nth(0).locator(ITEMS)).to_have_text(["Fresh idea"])
    expect(groups.nth(1).locator(ITEMS)).to_have_text(["Since yesterday"])
    expect(groups.nth(2).locator(ITEMS)).to_have_text(["Five days on"])
    expect(groups.nth(3).locator(ITEMS)).to_have_text(["Three weeks back"])
    expect(groups.nth(4).locator(ITEMS)).to_have_text(["Long ago"])
    shot(page, "sidebar-date-groups")


def test_a_chat_with_a_new_reply_moves_to_today(open_page, llm, gates, server):
    page = open_page("erin", "/")
    old = page.locator(ITEMS).filter(has_text="Long ago").get_by_role("link").get_attribute("href")
    open_chat(page, server.url(old))
    expect(page.locator(GROUPS).last.locator(ITEMS)).to_have_text(["Long ago"])
    llm.queue(reply(["Still here."]))
    send(page, "Anyone?")
    expect(page.locator(REPLIES)).to_have_count(2)
    wait_finished(page)
    expect(page.locator(GROUPS).first.locator("h2")).to_have_text("Today")
    expect(page.locator(GROUPS).first.locator(ITEMS)).to_have_text(["Long ago", "Fresh idea"])


# ---------------------------------------------------------------------------- search


def test_it_searches_as_you_type_without_leaving_the_open_chat(open_page):
    page = open_page("bob", "/")
    items = page.locator(ITEMS)
    expect(items).to_have_text(["Garden plans", "Tax questions", "Trip to Lisbon"])
    items.filter(has_text="Garden plans").get_by_role("link").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Garden plans")
    mark_window(page)

    search = page.get_by_test_id("search")
    search.press_sequentially("nata")  # words in a message, not a title; no Enter
    expect(items).to_have_text(["Trip to Lisbon"])
    expect(page.locator("#search-note")).to_contain_text("Chats matching “nata”")
    expect(page).to_have_url(re.compile(r"/c/\d+/\?q=nata$"))  # a reload shows the same list
    expect(page.get_by_test_id("conversation-title")).to_have_text("Garden plans")
    expect(page.locator(REPLIES + " [data-body]")).to_have_text(["After the last frost."])
    shot(page, "sidebar-search")

    search.fill("no such words")
    expect(items).to_have_count(0)
    expect(page.locator(".conv-empty")).to_have_text("No chats match.")
    search.press("Escape")  # clears the search
    expect(search).to_have_value("")
    expect(items).to_have_count(3)
    expect(page.locator("#search-note")).to_be_hidden()

    search.fill("tax")
    search.press("Enter")  # searches at once, still without a reload
    expect(items).to_have_text(["Tax questions"])
    search.fill("")
    expect(items).to_have_count(3)
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    assert_not_reloaded(page)
    expect(page.locator(REPLIES + " [data-body]")).to_have_text(["After the last frost."])


def test_the_search_still_works_without_javascript(open_page):
    page = open_page("bob", "/?q=nata", java_script_enabled=False)
    expect(page.locator(ITEMS)).to_have_text(["Trip to Lisbon"])
    page.get_by_test_id("search").fill("tax")
    page.get_by_test_id("search").press("Enter")
    expect(page.locator(ITEMS)).to_have_text(["Tax questions"])


# ---------------------------------------------------------------------------- each chat's menu


def menu_of(page, title: str):
    return page.locator(ITEMS).filter(has_text=title).get_by_test_id("conversation-menu")


def test_each_chats_menu_opens_by_keyboard_and_closes_on_escape_or_outside(open_page, site):
    page = open_page("carol", f"/c/{site.sessions['carol_garden']}/")
    menu = page.get_by_role("menu")
    button = menu_of(page, "Tax questions")
    expect(button).to_have_attribute("aria-label", "Options for “Tax questions”")
    button.focus()
    page.keyboard.press("Enter")
    expect(menu).to_be_visible()
    expect(button).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("menuitem", name="Rename")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("menuitem", name="Export Markdown")).to_be_focused()
    page.keyboard.press("End")
    expect(page.get_by_role("menuitem", name="Delete")).to_be_focused()
    shot(page, "sidebar-menu")
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(button).to_be_focused()
    expect(button).to_have_attribute("aria-expanded", "false")

    button.click()
    expect(menu).to_be_visible()
    page.get_by_test_id("composer").click()  # outside
    expect(menu).to_be_hidden()


def test_the_menu_renames_exports_and_deletes_another_chat_without_leaving_this_one(open_page, site):
    page = open_page("carol", f"/c/{site.sessions['carol_garden']}/")
    items = page.locator(ITEMS)
    expect(items).to_have_text(["Garden plans", "Tax questions", "Trip to Lisbon"])
    mark_window(page)

    menu_of(page, "Tax questions").click()
    page.get_by_role("menuitem", name="Rename").click()
    title = page.get_by_test_id("conv-rename-input")
    expect(title).to_have_value("Tax questions")
    title.fill("Taxes 2025")
    page.get_by_test_id("conv-rename-submit").click()
    expect(items).to_have_text(["Garden plans", "Taxes 2025", "Trip to Lisbon"])
    expect(page.get_by_test_id("conversation-title")).to_have_text("Garden plans")

    menu_of(page, "Trip to Lisbon").click()
    with page.expect_download() as markdown:
        page.get_by_role("menuitem", name="Export Markdown").click()
    assert markdown.value.suggested_filename.endswith(".md")
    assert "pastel de nata" in open(markdown.value.path(), encoding="utf-8").read()
    expect(page.get_by_role("menu")).to_be_hidden()
    menu_of(page, "Trip to Lisbon").click()
    with page.expect_download() as exported:
        page.get_by_role("menuitem", name="Export JSON").click()
    assert exported.value.suggested_filename.endswith(".json")
    data = json.loads(open(exported.value.path(), encoding="utf-8").read())
    assert "pastel de nata" in json.dumps(data)

    menu_of(page, "Taxes 2025").click()
    page.get_by_role("menuitem", name="Delete").click()
    dialog = page.locator("#conv-delete-dialog")
    expect(dialog).to_contain_text(
        "“Taxes 2025” and all its messages will be deleted. This cannot be undone."
    )
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(items).to_have_count(3)
    menu_of(page, "Taxes 2025").click()
    page.get_by_role("menuitem", name="Delete").click()
    page.get_by_test_id("conv-delete-confirm").click()
    expect(items).to_have_text(["Garden plans", "Trip to Lisbon"])
    expect(page).to_have_url(re.compile(rf"/c/{site.sessions['carol_garden']}/$"))
    assert_not_reloaded(page)

    page.reload()  # the server agrees
    expect(items).to_have_text(["Garden plans", "Trip to Lisbon"])


def test_renaming_the_open_chat_from_its_menu_retitles_the_page_and_deleting_it_starts_a_new_one(
    open_page, site
):
    page = open_page("gina", f"/c/{site.sessions['gina_garden']}/")
    menu_of(page, "Garden plans").click()
    page.get_by_role("menuitem", name="Rename").click()
    page.get_by_test_id("conv-rename-input").fill("Vegetable garden")
    page.get_by_test_id("conv-rename-submit").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Vegetable garden")
    expect(page).to_have_title(re.compile(r"^Vegetable garden"))

    menu_of(page, "Vegetable garden").click()
    page.get_by_role("menuitem", name="Delete").click()
    page.get_by_test_id("conv-delete-confirm").click()
    expect(page).to_have_url(re.compile(r"/new/$"))
    expect(page.get_by_test_id("conversation-title")).to_have_text("New chat")
    expect(page.locator(ITEMS)).not_to_contain_text(["Vegetable garden"])


def test_the_menu_works_in_the_phone_drawer(open_page):
    page = open_page(
        "frank",
        "/",
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
    page.get_by_role("button", name="Show chats").tap()
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left === 0")
    button = menu_of(page, "Trip to Lisbon")
    expect(button).to_be_visible()
    assert button.evaluate("e => getComputedStyle(e).opacity") == "1"  # no hover on a phone: always shown
    button.tap()
    menu = page.get_by_role("menu")
    expect(menu).to_be_in_viewport(ratio=1)
    shot(page, "phone-sidebar-menu")
    page.get_by_role("menuitem", name="Rename").tap()
    expect(page.get_by_test_id("conv-rename-input")).to_be_in_viewport()
    expect(page.get_by_test_id("conv-rename-input")).to_have_value("Trip to Lisbon")
    page.locator("#conv-rename-dialog").get_by_role("button", name="Cancel").tap()
    expect(page.locator("#conv-rename-dialog")).to_be_hidden()


# ---------------------------------------------------------------------------- stats line


def shown_stats(stats) -> str:
    """What the stats line shows on screen: its quiet form (CSS) or the whole line."""
    return stats.evaluate(
        """e => {
            const full = e.querySelector('.stats-full');
            if (full.getBoundingClientRect().width > 2) return full.textContent;
            return getComputedStyle(e, '::before').content.replace(/^"|"$/g, '');
        }"""
    )


def test_the_stats_line_is_quiet_until_hovered(open_page, site):
    page = open_page("dana", f"/c/{site.sessions['dana_timed']}/")
    reply_ = last_reply(page)
    stats = reply_.get_by_test_id("message-stats")
    full = "9 prompt · 6 completion tokens · first token 200 ms · 1.2 s total · 5.8 tok/s"
    expect(stats).to_have_text(full)  # all of it in the page, for screen readers
    page.get_by_test_id("composer").focus()
    page.mouse.move(5, 5)
    assert shown_stats(stats) == "1.2 s"
    shot(page, "stats-quiet")
    reply_.hover()
    assert shown_stats(stats) == full
    shot(page, "stats-full")
    page.get_by_test_id("composer").hover()
    assert shown_stats(stats) == "1.2 s"
    stats.focus()
    page.keyboard.press("Enter")  # a button: the keyboard toggles it as a tap does
    expect(stats).to_have_attribute("aria-expanded", "true")
    page.get_by_test_id("composer").focus()
    assert shown_stats(stats) == full


def test_a_tap_shows_the_whole_stats_line_on_a_touch_screen(open_page, site):
    page = open_page(
        "dana",
        f"/c/{site.sessions['dana_timed']}/",
        viewport={"width": 390, "height": 760},
        has_touch=True,
        is_mobile=True,
    )
    stats = last_reply(page).get_by_test_id("message-stats")
    expect(stats).to_have_attribute("aria-expanded", "false")
    assert shown_stats(stats) == "1.2 s"
    stats.tap()
    expect(stats).to_have_attribute("aria-expanded", "true")
    assert shown_stats(stats).startswith("9 prompt · 6 completion tokens")
    stats.tap()
    expect(stats).to_have_attribute("aria-expanded", "false")
    page.get_by_test_id("composer").tap()
    assert shown_stats(stats) == "1.2 s"


def test_a_streamed_reply_ends_with_the_quiet_stats_line(open_page, llm, gates):
    page = open_page("dana", "/")
    llm.queue(reply(["Quick."]))
    send(page, "Be quick")
    wait_finished(page)
    stats = last_reply(page).get_by_test_id("message-stats")
    expect(stats).to_have_attribute("data-quiet", re.compile(r"^[\d.]+ m?s$"))
    page.get_by_test_id("composer").hover()
    assert re.fullmatch(r"[\d.]+ m?s", shown_stats(stats))


# ---------------------------------------------------------------------------- sign-in page


def test_the_sign_in_page_shows_the_first_run_hint_only_until_the_admin_signs_in(open_page):
    page = open_page(None, "/accounts/login/")
    hint = page.get_by_test_id("first-run-hint")
    expect(hint).to_contain_text("The password for admin was printed when the site started")
    shot(page, "login-first-run-hint")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("first-run-password-1")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("composer")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("first-run-hint")).to_have_count(0)
    shot(page, "login-after-first-sign-in")

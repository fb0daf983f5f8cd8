"""The chat page's header in a real browser (issue #14): the model picker and system prompt of
every chat, new ones included; the demo model's notice; the phone layout's menu; the theme; the
admin link (fixtures and helpers: tests/browser.py)."""

from __future__ import annotations

import re

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    CHROMIUM,
    PASSWORD,
    WAIT_MS,
    body,
    browser,
    expect,
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

SETUP = r"""
provider = Provider.objects.create(name="loopback", base_url=BASE_URL, api_key=API_KEY)
ChatModel.objects.create(provider=provider, name="llama3.2", display_name="Llama 3.2")
chat("bob", "Soup recipes", "Which soup is quick?", "Leek and potato.")
chat("dana", "Planning a weekend in Lisbon", "Where do I start?", "At the river.")
User.objects.filter(username="carol").update(is_staff=True)
chat("erin", "Some code", "Show me code", "```python\ndef greet():\n    return 1\n```")
"""

WHITE = "rgb(255, 255, 255)"
DARK = "rgb(22, 24, 29)"
# Set before the page's own scripts: what <html data-theme> was when <body> first existed, i.e.
# what the first paint used. A theme applied later (by a module) would flash the other one.
THEME_AT_FIRST_PAINT = """
new MutationObserver((_, observer) => {
  if (!document.body) return;
  window.themeAtFirstPaint = document.documentElement.dataset.theme || "unset";
  observer.disconnect();
}).observe(document, { childList: true, subtree: true });
"""


@pytest.fixture(scope="module")
def site_setup():
    return SETUP


def picked(page) -> str:
    """The text of the picker's chosen option: what the user sees in the header."""
    return page.get_by_test_id("model-picker").evaluate("s => s.selectedOptions[0].textContent.trim()")


def background(page) -> str:
    return page.evaluate("() => getComputedStyle(document.body).backgroundColor")


def open_menu(page):
    page.get_by_test_id("menu").click()
    menu = page.locator("#page-menu")
    expect(menu).to_be_visible()
    return menu


# ---------------------------------------------------------------------------- model and prompt


def test_a_new_chat_is_answered_by_the_model_and_system_prompt_picked_before_its_first_message(
    open_page, llm
):
    page = open_page("alice")
    picker = page.get_by_test_id("model-picker")
    expect(picker).to_be_visible()
    # Display names, never ids: the site's default (no display name: its id), then the admin's.
    expect(picker.locator("option")).to_have_text(["gpt-4o-mini", "Llama 3.2"])
    picker.select_option(label="Llama 3.2")
    page.get_by_test_id("system-prompt-button").click()
    dialog = page.locator("#settings-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_test_id("settings-system-prompt").fill("Answer in French.")
    dialog.get_by_test_id("settings-submit").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("system-prompt-button")).to_have_attribute("data-set", "")
    shot(page, "header-new-chat")

    llm.queue(reply(["Bonjour !"]))
    send(page, "Hello")
    wait_finished(page)
    request = llm.requests[-1]["json"]
    assert request["model"] == "llama3.2"
    assert request["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert request["messages"][-1] == {"role": "user", "content": "Hello"}

    page.reload()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Hello")
    assert picked(page) == "Llama 3.2"
    page.get_by_test_id("system-prompt-button").click()
    expect(page.get_by_test_id("settings-system-prompt")).to_have_value("Answer in French.")


def test_switching_the_model_shows_its_display_name_and_answers_the_next_message(open_page, llm):
    page = open_page("bob")
    page.get_by_test_id("conversation-item").filter(has_text="Soup recipes").get_by_role("link").click()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Soup recipes")
    assert picked(page) == "gpt-4o-mini"
    page.get_by_test_id("model-picker").select_option(label="Llama 3.2")
    expect(page.get_by_test_id("toast")).to_have_text("Llama 3.2 answers from the next reply.")
    assert picked(page) == "Llama 3.2"

    page.reload()
    expect(page.get_by_test_id("conversation-title")).to_have_text("Soup recipes")
    assert picked(page) == "Llama 3.2"
    llm.queue(reply(["Try miso."]))
    send(page, "Something else?")
    wait_finished(page)
    assert llm.requests[-1]["json"]["model"] == "llama3.2"

    # A cancelled edit of the system prompt is not kept, nor sent.
    page.get_by_test_id("system-prompt-button").click()
    page.get_by_test_id("settings-system-prompt").fill("Only in rhymes.")
    page.locator("#settings-dialog").get_by_role("button", name="Cancel").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()
    expect(page.get_by_test_id("system-prompt-button")).not_to_have_attribute("data-set", "")
    llm.queue(reply(["Gazpacho."]))
    send(page, "And cold?")
    wait_finished(page)
    assert llm.requests[-1]["json"]["messages"][0]["role"] != "system"


ADD_RETIRED_OPTION = """picker => {
  // What a page loaded before the admin disabled a model still offers.
  picker.add(new Option("GPT-5 (since disabled)", "gpt-5-secret"));
}"""


def test_a_model_no_longer_offered_is_refused_in_plain_words_and_nothing_is_lost(open_page, llm):
    page = open_page("frank")
    picker = page.get_by_test_id("model-picker")
    picker.evaluate(ADD_RETIRED_OPTION)
    picker.select_option("gpt-5-secret")
    send(page, "My long first question")
    toast = page.get_by_test_id("toast")
    expect(toast).to_have_text(
        "The chat was not started: “gpt-5-secret” is not a model this site offers. "
        "Pick one from the list, or the default."
    )
    expect(page.get_by_test_id("composer")).to_have_value("My long first question")  # kept
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)  # nothing created
    expect(page.get_by_test_id("conversation-title")).to_have_text("New chat")

    picker.select_option(label="Llama 3.2")
    llm.queue(reply(["Answered."]))
    page.get_by_test_id("send").click()
    wait_finished(page)
    assert llm.requests[-1]["json"]["model"] == "llama3.2"

    # In a chat: the switch is refused and the picker goes back to the model that answers.
    picker.evaluate(ADD_RETIRED_OPTION)
    picker.select_option("gpt-5-secret")
    expect(toast).to_contain_text("“gpt-5-secret” is not a model this site offers")
    expect(picker).to_have_value("llama3.2")
    page.reload()
    assert picked(page) == "Llama 3.2"


# ---------------------------------------------------------------------------- demo notice


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory, llm):
    """No provider configured (the built-in demo model is the default) and one real model."""
    site = Site(tmp_path_factory.mktemp("demo"), env={"CHAT_DEMO_DELAY": "0.002"})
    site.migrate()
    site.create_user("demo", PASSWORD)
    site.shell(
        "from chat.models import ChatModel, Provider\n"
        f"provider = Provider.objects.create(name='loopback', base_url={llm.base_url!r}, api_key={TEST_API_KEY!r})\n"
        "ChatModel.objects.create(provider=provider, name='llama3.2', display_name='Llama 3.2')\n"
        "result = None"
    )
    with site.server() as demo_server:
        yield demo_server
    site.stop()


def test_the_demo_notice_belongs_to_the_demo_model_and_stays_dismissed(browser, demo_site, llm, gates):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    try:
        cookie = demo_site.login("demo", PASSWORD)
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": demo_site.origin}])
        page = context.new_page()
        page.goto(demo_site.url("/"))
        notice = page.get_by_test_id("demo-label")
        expect(notice).to_be_visible()
        expect(notice).to_contain_text("Demo model — not a real LLM.")
        expect(notice).to_contain_text("OPENAI_API_KEY")
        shot(page, "header-demo")
        assert notice.bounding_box()["height"] <= 40  # one quiet line, not 60 px
        assert picked(page) == "Demo model (not a real LLM)"  # labelled where it is chosen

        picker = page.get_by_test_id("model-picker")
        picker.select_option(label="Llama 3.2")
        expect(notice).to_be_hidden()  # a real model: no demo notice
        llm.queue(reply(["A real answer."]))
        send(page, "Hello real model")
        wait_finished(page)
        assert llm.requests[-1]["json"]["model"] == "llama3.2"
        page.reload()
        expect(page.get_by_test_id("conversation-title")).to_have_text("Hello real model")
        expect(notice).to_be_hidden()

        page.goto(demo_site.url("/"))
        expect(notice).to_be_visible()
        page.get_by_test_id("demo-dismiss").click()
        expect(notice).to_be_hidden()
        page.reload()
        assert picked(page) == "Demo model (not a real LLM)"
        expect(page.get_by_test_id("model-picker")).to_be_visible()
        expect(notice).to_be_hidden()  # remembered by this browser
        shot(page, "header-demo-dismissed")
    finally:
        context.close()

    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        phone.add_cookies([{"name": "sessionid", "value": cookie, "url": demo_site.origin}])
        page = phone.new_page()
        page.goto(demo_site.url("/"))
        notice = page.get_by_test_id("demo-label")
        expect(notice).to_be_visible()
        assert notice.bounding_box()["height"] <= 64  # it took ~150 px of a phone
        shot(page, "header-demo-phone")
    finally:
        phone.close()


# ---------------------------------------------------------------------------- phone


def test_a_phone_keeps_the_title_readable_and_the_model_and_chat_actions_reachable(open_page):
    page = open_page("dana", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.get_by_role("button", name="Show chats").tap()
    page.get_by_test_id("conversation-item").filter(has_text="Lisbon").get_by_role("link").tap()
    title = page.get_by_test_id("conversation-title")
    expect(title).to_have_text("Planning a weekend in Lisbon")
    # Readable: the whole title shows (it was cut to a few characters beside four buttons).
    assert title.evaluate("t => t.scrollWidth <= t.clientWidth && t.scrollHeight <= t.clientHeight")
    picker = page.get_by_test_id("model-picker")
    expect(picker).to_be_in_viewport()
    box = picker.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    expect(page.get_by_test_id("rename")).to_be_hidden()  # in the menu, not squeezed beside the title
    shot(page, "header-phone")

    menu = open_menu(page)
    shot(page, "header-phone-menu")
    menu.get_by_test_id("rename").tap()
    page.get_by_test_id("rename-input").fill("Lisbon in May")
    page.get_by_test_id("rename-submit").tap()
    expect(title).to_have_text("Lisbon in May")

    open_menu(page).get_by_test_id("delete").tap()
    page.get_by_test_id("delete-confirm").tap()
    expect(title).to_have_text("New chat")
    page.get_by_role("button", name="Show chats").tap()
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)


# ---------------------------------------------------------------------------- theme and admin


def test_the_theme_menu_beats_the_system_setting_and_holds_from_the_first_paint(open_page):
    page = open_page("erin", color_scheme="dark")
    page.context.add_init_script(THEME_AT_FIRST_PAINT)
    assert background(page) == DARK  # follows the system until chosen
    menu = open_menu(page)
    expect(menu.get_by_test_id("theme-auto")).to_have_attribute("aria-checked", "true")
    menu.get_by_test_id("theme-light").click()
    expect(menu).to_be_hidden()
    page.wait_for_function("() => getComputedStyle(document.body).backgroundColor === 'rgb(255, 255, 255)'")

    page.reload()
    expect(page.get_by_test_id("composer")).to_be_visible()
    assert page.evaluate("() => window.themeAtFirstPaint") == "light"  # no dark flash first
    assert background(page) == WHITE
    page.get_by_test_id("conversation-item").filter(has_text="Some code").get_by_role("link").click()
    code = page.locator("#messages .md pre").first
    expect(code).to_contain_text("def greet():")
    # Highlighted code follows the choice too, not the system's dark.
    assert code.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(248, 248, 248)"
    expect(open_menu(page).get_by_test_id("theme-light")).to_have_attribute("aria-checked", "true")
    page.get_by_test_id("theme-dark").click()
    page.reload()
    assert page.evaluate("() => window.themeAtFirstPaint") == "dark"
    assert background(page) == DARK
    page.emulate_media(color_scheme="light")
    assert background(page) == DARK  # the choice, not the system
    open_menu(page).get_by_test_id("theme-auto").click()
    page.wait_for_function("() => getComputedStyle(document.body).backgroundColor === 'rgb(255, 255, 255)'")


def test_staff_see_an_admin_link_and_others_do_not(open_page):
    page = open_page("carol")
    menu = open_menu(page)
    link = menu.get_by_test_id("admin-link")
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", "/admin/")
    link.click()
    expect(page).to_have_url(re.compile(r"/admin/$"))

    page = open_page("erin")
    menu = open_menu(page)
    expect(menu.get_by_test_id("theme-auto")).to_be_visible()
    expect(page.get_by_test_id("admin-link")).to_have_count(0)


def test_the_menu_works_from_the_keyboard(open_page):
    page = open_page("erin")
    button = page.get_by_test_id("menu")
    button.focus()
    page.keyboard.press("Enter")
    menu = page.locator("#page-menu")
    expect(button).to_have_attribute("aria-expanded", "true")
    expect(menu.get_by_test_id("theme-auto")).to_be_focused()  # a new chat: the theme comes first
    page.keyboard.press("ArrowDown")
    expect(menu.get_by_test_id("theme-light")).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(button).to_be_focused()
    expect(button).to_have_attribute("aria-expanded", "false")

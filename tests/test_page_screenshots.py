"""The screenshots in the README, taken from the real app in Chromium, with the states they
show asserted first, so a screenshot never shows a broken page.

They go to test-artifacts/screenshots/ like every browser test's; with
CHAT_SCREENSHOTS_TO_DOCS=1 they are written to docs/screenshots/ instead, which is how the
committed ones are made:

    CHAT_SCREENSHOTS_TO_DOCS=1 ./test.sh tests/test_page_screenshots.py
"""

from __future__ import annotations

import os
import re

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    PASSWORD,
    REPLIES,
    SCREENSHOTS,
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
    site,
    wait_finished,
)
from tests.live_server import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TO_DOCS = os.environ.get("CHAT_SCREENSHOTS_TO_DOCS") == "1"
OUT = REPO / "docs" / "screenshots" if TO_DOCS else SCREENSHOTS

# What the chat page shows: a team's models, a week of chats, one answered question.
SETUP = """
from datetime import timedelta
from django.contrib.auth.models import Permission
from django.utils import timezone

provider = Provider.objects.create(name="Team server", base_url=BASE_URL, api_key=API_KEY)
ChatModel.objects.create(provider=provider, name="gpt-4o-mini", display_name="GPT-4o mini", context_window=128000, is_default=True)
ChatModel.objects.create(provider=provider, name="llama3.2", display_name="Llama 3.2 (on our GPU)", context_window=32000)
now = timezone.now()

def dated(user, title, days_ago, model="gpt-4o-mini"):
    c = chat(user, title, "A question", "An answer.", model=model)
    when = now - timedelta(days=days_ago, hours=1)
    Conversation.objects.filter(pk=c.pk).update(updated_at=when)
    c.messages.update(created_at=when)
    c.messages.filter(role="assistant").update(model=model, prompt_tokens=1200, completion_tokens=350)

for user in ("alice", "bob", "carol"):
    dated(user, "Onboarding checklist for Maria", 0.1)
    dated(user, "SQL: running totals with window functions", 1)
    dated(user, "Why is the nightly build slow?", 3, model="llama3.2")
    dated(user, "Postmortem draft: DNS outage", 6)
    dated(user, "Kubernetes readiness vs liveness probes", 12, model="llama3.2")
    dated(user, "Team offsite ideas", 45)

# Replies over the last week, for the usage report's chart.
for days_ago, user, model, prompt, completion in [
    (6, "sam", "gpt-4o-mini", 5200, 900), (6, "tom", "llama3.2", 3100, 1400),
    (5, "sam", "gpt-4o-mini", 8200, 2100), (5, "uma", "gpt-4o-mini", 2400, 600),
    (4, "tom", "llama3.2", 9900, 3300), (4, "sam", "llama3.2", 1800, 500),
    (3, "uma", "gpt-4o-mini", 6100, 1700), (3, "tom", "gpt-4o-mini", 4000, 1200),
    (2, "sam", "gpt-4o-mini", 12100, 2600), (2, "tom", "llama3.2", 5300, 2000),
    (1, "uma", "gpt-4o-mini", 7300, 1900), (1, "sam", "llama3.2", 2600, 800),
    (0, "tom", "gpt-4o-mini", 6800, 1500), (0, "sam", "gpt-4o-mini", 4400, 1300),
]:
    c = Conversation.objects.create(user=User.objects.get(username=user), title="Work", model=model)
    Message.objects.create(conversation=c, role="user", content="…", token_count=prompt - 20,
                           created_at=now - timedelta(days=days_ago))
    Message.objects.create(conversation=c, role="assistant", content="…", status="finished", model=model,
                           prompt_tokens=prompt, completion_tokens=completion, token_count=completion,
                           usage={"prompt_tokens": prompt, "completion_tokens": completion},
                           ttft_ms=420.0, duration_ms=9100.0, finish_reason="stop",
                           created_at=now - timedelta(days=days_ago))

reviewer = User.objects.create_user("rosa", password=PASSWORD, is_staff=True)
for codename in ("view_conversation", "view_message"):
    reviewer.user_permissions.add(Permission.objects.get(content_type__app_label="chat", codename=codename))
"""

QUESTION = "How do I sum one column of a CSV in Python, skipping rows where it is empty?"
ANSWER = [
    "Use the standard library's `csv` module: read each row as a dict and add up the ",
    "column, skipping blanks.\n\n",
    "```python\nimport csv\n\n",
    "def column_total(path, column):\n",
    '    with open(path, newline="") as f:\n',
    "        return sum(float(row[column]) for row in csv.DictReader(f) if row[column].strip())\n",
    "```\n\n",
    '- `newline=""` lets `csv` handle line endings itself.\n',
    "- Use `decimal.Decimal` instead of `float` for money.\n",
]
FOLLOW_UP = "And with pandas?"
FOLLOW_UP_ANSWER = [
    "`pd.read_csv(path)[column].sum()` — pandas skips empty cells (NaN) when it sums.",
]
TITLE = "Summing a CSV column in Python"


@pytest.fixture(scope="module")
def site_setup():
    return SETUP


@pytest.fixture(scope="module")
def server(site):
    """The site as a team runs it: the model titles each new chat after its first reply."""
    with site.server(env={"CHAT_MODEL_TITLES": "true"}) as server:
        yield server


def save(page, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT / f"{name}.png"))


def answered(page, llm) -> None:
    """A question and a follow-up, answered by the default model, as a user sees them."""
    # What tiktoken counts for them (o200k_base), so the provider's figures agree with ours.
    usage = {"prompt_tokens": 26, "completion_tokens": 100, "total_tokens": 126}
    llm.queue(reply(ANSWER, usage=usage))
    llm.queue(reply([TITLE]))  # asked for after the first reply
    send(page, QUESTION)
    wait_finished(page)
    expect(page.get_by_test_id("conversation-title")).to_have_text(TITLE)
    llm.queue(reply(FOLLOW_UP_ANSWER))
    send(page, FOLLOW_UP)
    wait_finished(page)
    expect(page.locator(USER_TEXTS)).to_have_text([QUESTION, FOLLOW_UP])
    first = page.locator(REPLIES).first
    expect(body(first).locator("pre code")).to_contain_text("def column_total(path, column):")
    page.mouse.move(0, 0)


def test_the_chat_page_on_a_desktop(open_page, llm):
    page = open_page("alice", color_scheme="light")
    expect(page.locator("#sidebar")).to_contain_text("Today")
    expect(page.locator("#sidebar")).to_contain_text("Previous 7 days")
    answered(page, llm)
    expect(page.locator("select#settings-model, [data-testid=model-picker]").first).to_contain_text(
        "GPT-4o mini"
    )
    save(page, "chat-desktop")


def test_the_chat_page_in_dark_mode(open_page, llm):
    page = open_page("bob", color_scheme="dark")
    answered(page, llm)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(map(int, re.findall(r"\d+", background)[:3])) < 3 * 80, background  # dark, not light
    save(page, "chat-dark")


def test_the_chat_page_on_a_phone(open_page, llm):
    page = open_page(
        "carol",
        "/",
        viewport={"width": 390, "height": 844},
        color_scheme="light",
        is_mobile=True,
        has_touch=True,
    )
    answered(page, llm)
    expect(page.get_by_test_id("conversation-title")).to_be_visible()
    expect(page.get_by_test_id("menu")).to_be_visible()
    save(page, "chat-phone")


def test_the_version_switcher(open_page, llm):
    page = open_page("dana", color_scheme="light")
    llm.queue(reply(["Tuesdays at 10:00 suit most of the team."]))
    llm.queue(reply(["Weekly planning meeting time"]))  # the title
    send(page, "When should we hold the weekly planning meeting?")
    wait_finished(page)
    expect(page.get_by_test_id("conversation-title")).to_have_text("Weekly planning meeting time")
    for answer in (
        "Monday afternoons, so the week's work is fresh.",
        "Tuesdays at 10:00, after the stand-up.",
    ):
        llm.queue(reply([answer]))
        last_reply(page).get_by_test_id("regenerate").click()
        expect(body(last_reply(page))).to_have_text(answer)
        wait_finished(page)
    versions = last_reply(page)
    expect(versions.get_by_test_id("version-label")).to_have_text("3/3")
    versions.get_by_test_id("version-previous").click()
    expect(last_reply(page).get_by_test_id("version-label")).to_have_text("2/3")
    expect(body(last_reply(page))).to_have_text("Monday afternoons, so the week's work is fresh.")
    page.mouse.move(0, 0)
    save(page, "version-switcher")


def test_the_admin_transcript_and_usage_chart(open_page, llm, site):
    page = open_page("erin", color_scheme="light")
    answered(page, llm)
    conversation_id = int(re.search(r"/c/(\d+)/", page.url).group(1))
    site.sessions["rosa"] = site.session_cookie("rosa")

    transcript = open_page(
        "rosa", f"/admin/chat/conversation/{conversation_id}/change/", color_scheme="light"
    )
    content = transcript.locator("#content")
    expect(content).to_contain_text(QUESTION)
    expect(content.locator("pre code")).to_contain_text("def column_total(path, column):")
    expect(content.locator("input, textarea, select")).to_have_count(0)  # a reading view
    save(transcript, "admin-transcript")

    usage = open_page("rosa", "/admin/chat/message/usage/?days=30", color_scheme="light")
    chart = usage.locator("#content svg").first
    expect(chart).to_be_visible()
    expect(usage.locator("#content")).to_contain_text("sam")
    expect(usage.locator("#content")).to_contain_text("llama3.2")
    save(usage, "admin-usage")

"""The admin, for a reviewer (issue #14), in a real browser: a conversation's page is its
read-only transcript rendered as the chat page renders it, the usage report has a chart and
a table that fit the page, and counts never made read "unknown", never 0
(fixtures and helpers: tests/browser.py)."""

from __future__ import annotations

import re

import pytest

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    browser,
    contrast,
    expect,
    gates,
    llm,
    open_page,
    server,
    shot,
    site,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE = (
    '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2">\n\n'
    '[click me](javascript:window.__pwned=3) and <b onmouseover="window.__pwned = 4">bold?</b>'
)

REVIEWERS = """
from datetime import timedelta

from django.contrib.auth.models import Permission, User
from django.utils import timezone
from chat.models import Conversation, Message

def staff(name, *perms):
    user = User.objects.create_user(name, is_staff=True)  # signed in below: no password to hash
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    session = SessionStore()  # signed in, as BASE_SETUP signs in USERS
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = next(b for b in settings.AUTHENTICATION_BACKENDS if not b.startswith("axes."))
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    result[name] = session.session_key

# rosa reviews conversations; nils is staff who may only look after invites.
staff("rosa", "chat.view_conversation", "chat.view_message")
staff("nils", "chat.view_invite")
olga = User.objects.create_user("olga")
pavel = User.objects.create_user("pavel")

def message(conversation, role, content, **fields):
    return Message.objects.create(conversation=conversation, role=role, content=content, **fields)

conversation = Conversation.objects.create(
    user=olga, title="Quarterly figures", model="tiny-window", system_prompt="Answer briefly.",
)
message(
    conversation, "user", "Sum up the quarter.\\nFirst line of notes\\nSecond line of notes",
    status="finished", token_count=12345, tokens_before=0, messages_before=0,
)
message(
    conversation, "assistant", "An earlier answer, since regenerated.", status="finished",
    superseded=True, finish_reason="stop", model="tiny-window", token_count=7, prompt_tokens=12345,
    completion_tokens=7, ttft_ms=400.0, duration_ms=500.0,
)
message(
    conversation, "assistant",
    "Revenue grew.\\n\\n```python\\ndef growth(a, b):\\n    return (b - a) / a\\n```\\n\\n" + HOSTILE,
    status="finished", finish_reason="stop", model="tiny-window", token_count=4321,
    prompt_tokens=12345, completion_tokens=4321, ttft_ms=850.4471, duration_ms=3248.337167000045,
    seq=917, lease_until=timezone.now() + timedelta(seconds=10), tokens_before=12345, messages_before=1,
    reasoning="The user wants a summary.", usage={"prompt_tokens": 12345, "completion_tokens": 4321},
)
message(conversation, "user", "And the outlook?", status="finished", token_count=5)
message(
    conversation, "assistant", "Partial outl", status="failed", finish_reason="error",
    model="tiny-window", token_count=3, prompt_tokens=12345, completion_tokens=3,
    error_code="upstream_error", error_detail="The provider answered 502.",
)

# Written while tiktoken's vocabularies were missing: no counts at all.
uncounted = Conversation.objects.create(user=pavel, title="Counted by nobody", model="other-model")
later = timezone.now() - timedelta(days=2)
message(uncounted, "user", "Hello?", status="finished", token_count=None, created_at=later)
message(
    uncounted, "assistant", "Hi.", status="finished", finish_reason="stop", model="other-model",
    token_count=None, prompt_tokens=None, completion_tokens=None, created_at=later,
)
message(
    uncounted, "assistant", "Hi again.", status="finished", finish_reason="stop", model="tiny-window",
    token_count=None, prompt_tokens=None, completion_tokens=None, created_at=later,
)
# sven: a week of drafts, for a chart with more than one day.
sven = User.objects.create_user("sven")
# (a title with no spaces, which must not widen the lists)
weekly = Conversation.objects.create(user=sven, title="Weekly-report-drafts-for-the-board-Q4-final-v2-summary", model="big-model")
drafts = [(5200, 900), (8100, 1500), (3000, 700), (12000, 2600), (6400, 1100)]  # 34,700 and 6,800
for days_ago, (prompt, completion) in enumerate(drafts, start=1):
    message(
        weekly, "assistant", "Draft.", status="finished", finish_reason="stop", model="big-model",
        token_count=completion, prompt_tokens=prompt, completion_tokens=completion,
        created_at=timezone.now() - timedelta(days=days_ago),
    )
result["_ids"] = {"reviewed": conversation.pk, "uncounted": uncounted.pk}
"""


@pytest.fixture(scope="module")
def site_setup():
    """Staff (`rosa` reviews, `nils` may not), signed in, and conversations to review."""
    return f"HOSTILE = {HOSTILE!r}\n" + REVIEWERS


@pytest.fixture(scope="module")
def reviewed(site):
    """The ids of the conversations to review: `reviewed` (counted) and `uncounted`."""
    return site.sessions["_ids"]


def views_logged(site, conversation: int) -> int:
    return site.shell(
        "from chat.models import TranscriptAccess\n"
        f"result = TranscriptAccess.objects.filter(staff__username='rosa', conversation_id={conversation},"
        " kind='view').count()"
    )


def fits(page, box: str | None = None) -> None:
    """No horizontal scrolling: the page is no wider than the window, and `box` (a list's own
    scroll box, which the admin gives its tables) no wider than itself: nothing is cut off."""
    page.wait_for_function("document.scrollingElement.scrollWidth <= window.innerWidth")
    if box is not None:
        inner = page.locator(box)
        expect(inner).to_be_visible()
        assert inner.evaluate("e => e.scrollWidth <= e.clientWidth"), inner.evaluate(
            "e => [e.scrollWidth, e.clientWidth]"
        )


def message_in(page, text: str):
    return page.get_by_test_id("transcript-message").filter(has_text=text)


# ---------------------------------------------------------------------------- the transcript


def test_a_conversations_admin_page_is_its_read_only_transcript_and_is_logged(open_page, site, reviewed):
    before = views_logged(site, reviewed["reviewed"])
    page = open_page("rosa", "/admin/chat/conversation/")
    page.get_by_role("link", name="Quarterly figures").click()
    expect(page).to_have_url(re.compile(rf"/admin/chat/conversation/{reviewed['reviewed']}/change/$"))
    expect(page.locator("#content h1")).to_have_text("Quarterly figures")
    expect(page.get_by_test_id("transcript-message")).to_have_count(5)
    # Nothing to edit, and none of Django's true/false icons.
    expect(page.locator("#content input, #content textarea, #content select")).to_have_count(0)
    expect(page.locator("#content img")).to_have_count(0)
    summary = page.get_by_test_id("transcript-summary")
    expect(summary).to_contain_text("olga")
    expect(summary).to_contain_text("Prompt tokens")
    expect(summary).to_contain_text("37,035")  # three replies of 12,345 each
    reply = message_in(page, "Revenue grew.")
    figures = reply.get_by_test_id("message-figures")
    for shown in ("prompt12,345", "completion4,321", "first token850 ms", "total3.2 s", "finishstop"):
        expect(figures).to_contain_text(shown)
    expect(figures).to_contain_text("provider's count12,345 / 4,321")
    for raw in ("3248.3", "850.4", "917", "12345"):
        expect(page.locator("#content")).not_to_contain_text(raw)
    # Secondary, but there: earlier versions, reasoning (folded), errors, the system prompt.
    earlier = message_in(page, "An earlier answer")
    expect(earlier.get_by_test_id("earlier-version")).to_have_text("earlier version")
    expect(reply.get_by_test_id("earlier-version")).to_have_count(0)
    reasoning = reply.locator("details.reasoning")
    expect(reasoning).not_to_have_attribute("open", "")
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    failed = message_in(page, "Partial outl")
    expect(failed.get_by_test_id("message-status")).to_have_text("failed")
    expect(failed.locator(".error")).to_contain_text("The provider answered 502.")
    expect(page.locator("details.system-prompt")).to_contain_text("Answer briefly.")
    expect(page.get_by_role("link", name="Export Markdown")).to_be_visible()
    shot(page, "admin-transcript")
    assert views_logged(site, reviewed["reviewed"]) == before + 1
    fits(page)


def test_the_transcript_renders_like_the_chat_page_and_model_text_stays_inert(open_page, reviewed):
    page = open_page("rosa", f"/admin/chat/conversation/{reviewed['reviewed']}/change/")
    question = message_in(page, "Sum up the quarter.").get_by_test_id("message-body")
    # A person's line breaks are kept, as typed.
    expect(question).to_have_css("white-space", "pre-wrap")
    lines = question.evaluate("e => e.innerText.split('\\n')")
    assert lines == ["Sum up the quarter.", "First line of notes", "Second line of notes"]
    assert question.bounding_box()["height"] > 2.5 * float(
        question.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)")
    )
    # Code is boxed and coloured: Pygments' classes, and a background of its own.
    reply = message_in(page, "Revenue grew.")
    code = reply.locator("pre").first
    expect(code.locator("span.k")).to_have_text(["def", "return"])
    expect(code.locator("span.nf")).to_have_text("growth")
    box = code.evaluate("e => getComputedStyle(e).backgroundColor")
    around = reply.evaluate("e => getComputedStyle(e).backgroundColor")
    assert box not in (around, "rgba(0, 0, 0, 0)")
    keyword = code.locator("span.k").first.evaluate("e => getComputedStyle(e).color")
    assert keyword != code.evaluate("e => getComputedStyle(e).color")
    expect(code).to_have_css("border-top-style", "solid")
    # Markdown renders; hostile HTML in it shows as text and runs nothing.
    expect(reply.locator(".md p").first).to_have_text("Revenue grew.")
    body = reply.get_by_test_id("message-body")
    expect(body).to_contain_text("<script>window.__pwned = 1</script>")
    expect(body).to_contain_text('<b onmouseover="window.__pwned = 4">bold?</b>')
    expect(body.locator("script, img, b")).to_have_count(0)
    link = body.get_by_role("link", name="click me")
    expect(link).to_have_count(0)  # the javascript: link is not made a link at all
    body.get_by_text("bold?").hover()
    assert page.evaluate("window.__pwned") is None
    shot(page, "admin-transcript-code")


@pytest.mark.parametrize("scheme,admin_theme", [("dark", "auto"), ("light", "dark"), ("dark", "light")])
def test_code_in_the_transcript_stays_legible_in_every_theme(open_page, reviewed, scheme, admin_theme):
    """code.css follows the system's theme, the admin its own switch: they may disagree."""
    path = f"/admin/chat/conversation/{reviewed['reviewed']}/change/"
    page = open_page("rosa", path, color_scheme=scheme)
    page.evaluate(f"localStorage.setItem('theme', '{admin_theme}')")  # what the admin's switch stores
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", admin_theme)
    code = message_in(page, "Revenue grew.").locator("pre").first
    expect(code).to_be_visible()
    assert contrast(code) >= 4.5  # the block's own text on its own background
    shot(page, f"admin-transcript-{scheme}-system-{admin_theme}-admin")


def test_messages_and_the_old_transcript_address_lead_to_the_conversations_page(open_page, reviewed):
    page = open_page("rosa", "/admin/chat/message/")
    page.locator("#result_list td.field-written a").first.click()
    expect(page).to_have_url(re.compile(r"/admin/chat/conversation/\d+/change/#message-\d+$"))
    target = page.url.rsplit("#", 1)[1]
    expect(page.locator(f"article#{target}")).to_have_css("outline-style", "solid")  # the one it led to
    old = open_page("rosa", f"/admin/chat/conversation/{reviewed['reviewed']}/transcript/")
    expect(old).to_have_url(re.compile(rf"/admin/chat/conversation/{reviewed['reviewed']}/change/$"))
    expect(old.locator("#content h1")).to_have_text("Quarterly figures")


# ---------------------------------------------------------------------------- lists and figures


def test_the_admin_is_named_for_the_site_not_django(open_page, reviewed):
    page = open_page("rosa", "/admin/")
    expect(page.locator("#site-name")).to_have_text("Chat admin")
    expect(page).to_have_title(re.compile(r"\| Chat admin$"))
    expect(page.locator("body")).not_to_contain_text("Django administration")
    expect(page.locator("body")).not_to_contain_text("Django site admin")
    transcript = open_page("rosa", f"/admin/chat/conversation/{reviewed['reviewed']}/change/")
    expect(transcript.locator("#site-name")).to_have_text("Chat admin")
    expect(transcript).to_have_title(re.compile(r"\| Chat admin$"))


def test_a_reviewer_sees_durations_and_token_figures_formatted_and_no_internals(open_page, reviewed):
    """Durations in ms or s, token counts with thousands separators, and none of the
    streaming machinery (seq, lease, the history counts kept for budgets) on any page
    where a reviewer reads a conversation or its messages."""
    totals = ("37,035", "4,331")  # the conversation's three replies, summed
    pages = {
        "conversation": (f"/admin/chat/conversation/{reviewed['reviewed']}/change/", ("12,345", "4,321")),
        "messages": ("/admin/chat/message/", ("12,345", "4,321")),
        "conversations": ("/admin/chat/conversation/", totals),
        "usage": ("/admin/chat/message/usage/", totals),
    }
    for name, (path, figures) in pages.items():
        page = open_page("rosa", path)
        text = page.locator("#content")
        for figure in figures:
            expect(text).to_contain_text(figure)
        for raw in ("12345", "4321", "37035", "4331", "3248.3", "850.4", "917"):
            expect(text).not_to_contain_text(raw)
        for internal in (r"\bseq\b", r"\blease", r"tokens.before", r"messages.before"):
            expect(text).not_to_contain_text(re.compile(internal, re.IGNORECASE))
        if name == "conversation":
            expect(text).to_contain_text("850 ms")
            expect(text).to_contain_text("3.2 s")
        shot(page, f"admin-figures-{name}")


def test_the_conversation_and_message_lists_fit_a_1280_px_window(open_page, reviewed):
    page = open_page("rosa", "/admin/chat/conversation/")
    expect(page.locator("#result_list thead th")).to_have_count(7)
    fits(page, "#changelist-form .results")
    shot(page, "admin-conversations")
    page = open_page("rosa", "/admin/chat/message/")
    expect(page.locator("#result_list tbody tr")).to_have_count(13)
    shot(page, "admin-messages")
    fits(page, "#changelist-form .results")


def test_counts_never_made_read_unknown_with_how_to_fix_it_never_0(open_page, reviewed):
    uncounted = reviewed["uncounted"]
    # The conversation list: the totals of a conversation whose replies were not counted.
    page = open_page("rosa", "/admin/chat/conversation/")
    row = page.locator("#result_list tbody tr").filter(has_text="Counted by nobody")
    expect(row.locator("td.field-prompt_tokens")).to_have_text("unknown")
    expect(row.locator("td.field-completion_tokens")).to_have_text("unknown")
    # The messages list: each message's own count.
    page = open_page("rosa", "/admin/chat/message/?q=Hi+again")
    row = page.locator("#result_list tbody tr").first
    for column in ("tokens", "prompt", "completion"):
        expect(row.locator(f"td.field-{column}")).to_have_text("unknown")
    # The transcript, with the way to fix it.
    page = open_page("rosa", f"/admin/chat/conversation/{uncounted}/change/")
    expect(page.get_by_test_id("transcript-summary")).to_contain_text("Prompt tokensunknown")
    question = message_in(page, "Hello?").get_by_test_id("message-figures")
    expect(question).to_have_text("tokensunknown")
    expect(page.get_by_test_id("unknown-hint")).to_contain_text("manage.py fetch_vocabularies")
    shot(page, "admin-transcript-unknown")
    # The usage report: rows, and totals that leave replies out say so.
    page = open_page("rosa", "/admin/chat/message/usage/")
    table = page.get_by_test_id("usage-table")
    pavel = table.locator("tbody tr").filter(has_text="pavel").filter(has_text="other-model")
    expect(pavel.locator("td").nth(4)).to_have_text("unknown")
    expect(pavel.locator("td").nth(5)).to_have_text("unknown")
    total = page.get_by_test_id("usage-total")
    expect(total.locator("td").nth(2)).to_have_text("71,735 + 2 unknown")  # 37,035 + 34,700
    expect(page.get_by_test_id("unknown-hint")).to_contain_text("manage.py fetch_vocabularies")
    expect(table).not_to_contain_text(re.compile(r"(^|\s)0(\s|$)"))


# ---------------------------------------------------------------------------- the usage report


def test_the_usage_report_is_linked_from_the_admin_index_for_those_who_may_read_it(open_page, reviewed):
    page = open_page("rosa", "/admin/")
    link = page.get_by_role("link", name="Token usage")
    expect(link).to_be_visible()
    shot(page, "admin-index")
    link.click()
    expect(page).to_have_url(re.compile(r"/admin/chat/message/usage/$"))
    expect(page.locator("#content h1")).to_have_text("Token usage")
    expect(page.locator("body")).to_contain_text("olga")  # the report itself, not a refusal
    # The chat app's own index lists it too.
    chat_index = open_page("rosa", "/admin/chat/")
    expect(chat_index.get_by_role("link", name="Token usage")).to_be_visible()
    # Staff who may not open the report are not shown a link to a refusal.
    other = open_page("nils", "/admin/")
    expect(other.get_by_role("link", name="Invites")).to_be_visible()
    expect(other.get_by_role("link", name="Token usage")).to_have_count(0)


def test_the_usage_report_charts_tokens_per_day_by_user_and_model_and_fits_the_page(open_page, reviewed):
    page = open_page("rosa", "/admin/chat/message/usage/")
    chart = page.get_by_test_id("usage-chart").locator("svg").first
    expect(chart).to_be_visible()
    expect(chart).to_have_attribute("role", "img")
    expect(chart.locator("title").first).to_have_text("Tokens per day by user and model")
    expect(chart.locator("desc")).to_contain_text("pavel · other-model")
    expect(page.get_by_role("img", name="Tokens per day by user and model")).to_be_visible()
    # One series per user and model in the table, each with bars and a legend entry.
    series = ["olga · tiny-window", "pavel · other-model", "pavel · tiny-window", "sven · big-model"]
    drawn = chart.locator("g.series")
    assert sorted(drawn.evaluate_all("gs => gs.map(g => g.dataset.series)")) == series
    legend = page.get_by_test_id("usage-legend").locator("li")
    assert sorted(legend.evaluate_all("ls => ls.map(l => l.dataset.series)")) == series
    expect(legend.filter(has_text="olga · tiny-window")).to_contain_text(
        "41,366 tokens"
    )  # prompt + completion
    colours = drawn.evaluate_all("gs => gs.map(g => g.getAttribute('fill'))")
    assert len(set(colours)) == len(series)
    olga = chart.locator('g.series[data-series="olga · tiny-window"] rect')
    expect(olga).to_have_count(1)
    assert olga.bounding_box()["height"] > 50  # the busiest day is drawn tall
    expect(olga.locator("title")).to_contain_text("olga · tiny-window")
    # Pavel's replies were not counted: in the legend, unknown, not 0.
    expect(legend.filter(has_text="pavel · other-model")).to_contain_text("unknown")
    expect(chart.locator('g.series[data-series="sven · big-model"] rect')).to_have_count(5)  # one a day
    expect(legend.filter(has_text="sven · big-model")).to_contain_text("41,500 tokens")
    fits(page)
    table = page.get_by_test_id("usage-table")
    assert table.evaluate(
        "t => t.getBoundingClientRect().right <= t.parentElement.getBoundingClientRect().right"
    )
    shot(page, "admin-usage")

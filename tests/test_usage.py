"""The token usage report (chat/usage.py): one query for the table, the CSV and the chart."""

import csv
import io
from datetime import date, timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message
from chat.usage import MAX_SERIES, PALETTE, total_text, usage_chart, usage_rows


@pytest.fixture
def staff_client(client, db):
    client.force_login(User.objects.create_superuser("charlie", password="x"))
    return client


def reply(conversation, **fields):
    return Message.objects.create(
        conversation=conversation, role="assistant", content="answer", status="finished", **fields
    )


def test_it_says_unknown_or_how_many_are_left_out_never_a_bare_partial_sum():
    assert total_text(1234) == "1,234"
    assert total_text(0) == "0"
    assert total_text(None, 3) == "unknown"
    assert total_text(1234, 2) == "1,234 + 2 unknown"


def test_it_reports_replies_not_counted_and_flags_only_whole_comparisons(staff_client):
    alice = User.objects.create_user("alice")
    chat = Conversation.objects.create(user=alice, title="t")
    # Counted, with the provider's figures for every reply: compared.
    reply(
        chat,
        model="m1",
        prompt_tokens=10,
        completion_tokens=5,
        usage={"prompt_tokens": 10, "completion_tokens": 6},
    )
    # Counted, the provider reported one of two replies: not compared (a partial sum always differs).
    reply(
        chat,
        model="m2",
        prompt_tokens=10,
        completion_tokens=5,
        usage={"prompt_tokens": 10, "completion_tokens": 5},
    )
    reply(chat, model="m2", prompt_tokens=20, completion_tokens=7)
    # Not counted (no vocabulary): unknown, not 0, and not compared.
    reply(chat, model="m3", usage={"prompt_tokens": 10, "completion_tokens": 5})
    response = staff_client.get(reverse("admin:chat_message_usage"), {"format": "csv"})
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(response.content.decode()))}
    assert rows["m1"]["mismatch"] == "True"
    assert (rows["m2"]["prompt_tokens"], rows["m2"]["mismatch"]) == ("30", "False")
    m3 = rows["m3"]
    assert (m3["prompt_tokens"], m3["completion_tokens"], m3["mismatch"]) == ("", "", "False")
    assert (m3["prompt_not_counted"], m3["completion_not_counted"]) == ("1", "1")
    page = staff_client.get(reverse("admin:chat_message_usage")).content.decode()
    assert "40 + 1 unknown" in page  # the total row: 10 + 10 + 20 counted, one reply not
    assert "fetch_vocabularies" in page


def test_the_chart_stacks_a_bar_a_day_with_one_series_per_user_and_model():
    today = date(2026, 11, 30)

    def row(day, user, model, prompt, completion):
        return {
            "day": day,
            "user": user,
            "model": model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_not_counted": int(prompt is None),
            "completion_not_counted": int(completion is None),
        }

    rows = [
        row(today, "alice", "m1", 600, 400),
        row(today, "bob", "m1", 300, 200),
        row(today - timedelta(days=3), "alice", "m1", 150, 100),
        row(today - timedelta(days=3), "bob", "m2", None, None),
    ]
    chart = usage_chart(rows)
    assert [d.isoformat() for d in chart.days] == ["2026-11-27", "2026-11-28", "2026-11-29", "2026-11-30"]
    assert [(s.name, s.total_text) for s in chart.series] == [
        ("alice · m1", "1,250"),
        ("bob · m1", "500"),
        ("bob · m2", "unknown"),
    ]
    alice, bob, uncounted = chart.series
    assert len(alice.bars) == 2 and len(bob.bars) == 1 and uncounted.bars == []
    # Stacked: bob's bar sits on alice's, and the day's height is in proportion to its tokens.
    assert bob.bars[0].y + bob.bars[0].height == pytest.approx(alice.bars[1].y)
    tall, short = alice.bars[1].height + bob.bars[0].height, alice.bars[0].height
    assert tall / short == pytest.approx(1500 / 250, rel=0.02)
    assert "Busiest day: 2026-11-30, 1,500 tokens" in chart.description
    assert usage_chart([]) is None


def test_the_chart_keeps_the_largest_series_and_sums_the_rest():
    day = date(2026, 11, 30)
    rows = [
        {
            "day": day,
            "user": f"user{n}",
            "model": "m",
            "prompt_tokens": 100 * (n + 1),
            "completion_tokens": 0,
            "prompt_not_counted": 0,
            "completion_not_counted": 0,
        }
        for n in range(12)
    ]
    chart = usage_chart(rows)
    assert len(chart.series) == MAX_SERIES + 1 == len(PALETTE)
    assert chart.series[0].name == "user11 · m"
    assert chart.series[-1].name == "5 others"
    assert chart.series[-1].total == sum(100 * (n + 1) for n in range(5))
    assert len({s.colour for s in chart.series}) == len(chart.series)


def test_the_day_filter_counts_back_from_now(staff_client):
    chat = Conversation.objects.create(user=User.objects.create_user("alice"), title="t")
    reply(
        chat,
        model="old",
        prompt_tokens=1,
        completion_tokens=1,
        created_at=timezone.now() - timedelta(days=40),
    )
    reply(chat, model="new", prompt_tokens=1, completion_tokens=1)
    assert [row["model"] for row in usage_rows("30")] == ["new"]
    assert sorted(row["model"] for row in usage_rows(None)) == ["new", "old"]

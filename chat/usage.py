"""The token usage report: tokens per day, user and model, as a table, a CSV and a chart.

All three are drawn from the one query (usage_rows), so the chart never says what the table
does not. The chart is SVG computed here and written out by a template: no script, no
library, nothing fetched, readable with the admin's styles off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from django.db.models import Count, IntegerField, Q, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, TruncDate
from django.utils import timezone

from chat.models import Message
from chat.rendering import token_text

USAGE_COLUMNS = (
    "day",
    "user",
    "model",
    "replies",
    "prompt_tokens",
    "completion_tokens",
    "upstream_prompt_tokens",
    "upstream_completion_tokens",
    "mismatch",
    # Added in issue #14, at the end so a spreadsheet reading the columns above keeps working:
    # replies whose count is unknown (no tiktoken vocabulary when they were written), which
    # the two sums above leave out.
    "prompt_not_counted",
    "completion_not_counted",
)

# What a reviewer reads above each column; the CSV keeps the names above.
USAGE_HEADINGS = {
    "day": "Day",
    "user": "User",
    "model": "Model",
    "replies": "Replies",
    "prompt_tokens": "Prompt",
    "completion_tokens": "Completion",
    "upstream_prompt_tokens": "Provider: prompt",
    "upstream_completion_tokens": "Provider: completion",
    "mismatch": "Mismatch",
}


def _usage_key(key):
    return Cast(KeyTextTransform(key, "usage"), IntegerField())


def usage_rows(days: str | None = None) -> list[dict]:
    """One row per day, user and model of finished replies (newest day first). A token sum
    is None when no reply of the row was counted; `*_not_counted` says how many were not."""
    replies = Message.objects.filter(role=Message.Role.ASSISTANT).exclude(status=Message.Status.STREAMING)
    if days and days.isdigit():
        replies = replies.filter(created_at__gte=timezone.now() - timedelta(days=int(days)))
    rows = (
        replies.annotate(day=TruncDate("created_at"))
        .values("day", "conversation__user__username", "model")
        .annotate(
            replies=Count("id"),
            # Counted first: an annotation named like the field would shadow it in the filter.
            prompt_not_counted=Count("id", filter=Q(prompt_tokens__isnull=True)),
            completion_not_counted=Count("id", filter=Q(completion_tokens__isnull=True)),
            reported=Count(
                "id", filter=Q(usage__has_key="prompt_tokens") | Q(usage__has_key="completion_tokens")
            ),
        )
        .annotate(
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            upstream_prompt_tokens=Sum(_usage_key("prompt_tokens")),
            upstream_completion_tokens=Sum(_usage_key("completion_tokens")),
        )
        .order_by("-day", "conversation__user__username", "model")
    )
    result = []
    for row in rows:
        row["user"] = row.pop("conversation__user__username")
        upstream = (row["upstream_prompt_tokens"], row["upstream_completion_tokens"])
        ours = (row["prompt_tokens"], row["completion_tokens"])
        # Ours against theirs only where both sides have every reply: a partial sum always differs.
        counted = not row["prompt_not_counted"] and not row["completion_not_counted"]
        reported = row.pop("reported") == row["replies"]
        row["mismatch"] = counted and reported and upstream != ours
        result.append(row)
    return result


def usage_totals(rows: list[dict]) -> dict:
    """The table's last line: sums over the rows shown, and how many replies they leave out."""
    total = {"replies": sum(row["replies"] for row in rows)}
    for column in (
        "prompt_tokens",
        "completion_tokens",
        "upstream_prompt_tokens",
        "upstream_completion_tokens",
    ):
        values = [row[column] for row in rows if row[column] is not None]
        total[column] = sum(values) if values else None
    for column in ("prompt_not_counted", "completion_not_counted"):
        total[column] = sum(row[column] for row in rows)
    return total


def total_text(total: int | None, not_counted: int = 0) -> str:
    """A sum as a reviewer should read it: "1,234", "unknown" when nothing was counted, and
    "1,234 + 2 unknown" when it leaves out replies that were not: never a bare partial sum."""
    if total is None and not_counted:
        return "unknown"
    shown = token_text(total or 0)
    return f"{shown} + {not_counted} unknown" if not_counted else shown


# ------------------------------------------------------------------------------------ the chart

# Okabe & Ito's palette: told apart with the common colour-vision deficiencies, and each
# at least 3:1 against white for the bars' edges.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C6D1F", "#555555")
MAX_SERIES = len(PALETTE) - 1  # the rest are summed as one "others" series, in the last colour

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 40  # room for the axis labels
MAX_DAY_LABELS = 10


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass
class Series:
    name: str
    colour: str
    total: int | None  # None: none of its replies was counted
    not_counted: int = 0
    bars: list[Bar] = field(default_factory=list)

    @property
    def total_text(self) -> str:
        return total_text(self.total, self.not_counted)


@dataclass
class Chart:
    """Stacked bars: one bar a day, one colour per user and model."""

    series: list[Series]
    days: list[date]
    ticks: list[tuple[float, str]]  # (y, label) on the token axis
    day_labels: list[tuple[float, str]]  # (x, label) under the bars
    description: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_bottom: int = HEIGHT - BOTTOM
    plot_right: int = WIDTH - RIGHT


def _nice_step(top: int, steps: int = 4) -> int:
    raw = max(top / steps, 1)
    magnitude = 10 ** (len(str(int(raw))) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return max(int(factor * magnitude), 1)
    return int(10 * magnitude)


def usage_chart(rows: list[dict]) -> Chart | None:
    """Tokens (prompt + completion, our count) per day for each user and model of `rows`;
    None when there is nothing to draw. Days without replies are drawn as empty days."""
    if not rows:
        return None
    by_series: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["user"], row["model"] or "(no model)")
        entry = by_series.setdefault(key, {"days": {}, "total": None, "not_counted": 0})
        if row["prompt_tokens"] is not None or row["completion_tokens"] is not None:
            tokens = (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)
            entry["days"][row["day"]] = entry["days"].get(row["day"], 0) + tokens
            entry["total"] = (entry["total"] or 0) + tokens
        entry["not_counted"] += max(row["prompt_not_counted"], row["completion_not_counted"])
    ranked = sorted(by_series.items(), key=lambda item: (-(item[1]["total"] or 0), item[0]))
    if len(ranked) > MAX_SERIES + 1:
        kept, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
        others = {"days": {}, "total": None, "not_counted": 0}
        for _, entry in rest:
            for day, tokens in entry["days"].items():
                others["days"][day] = others["days"].get(day, 0) + tokens
            if entry["total"] is not None:
                others["total"] = (others["total"] or 0) + entry["total"]
            others["not_counted"] += entry["not_counted"]
        ranked = [*kept, ((f"{len(rest)} others", ""), others)]

    first, last = min(row["day"] for row in rows), max(row["day"] for row in rows)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    per_day = {day: sum(entry["days"].get(day, 0) for _, entry in ranked) for day in days}
    step = _nice_step(max(per_day.values()) or 1)
    top = step * -(-max(max(per_day.values()), 1) // step)  # the highest day, rounded up a step
    plot_height = HEIGHT - BOTTOM - TOP
    plot_width = WIDTH - LEFT - RIGHT
    slot = plot_width / len(days)
    bar_width = max(slot * 0.7, 1)

    def y(tokens: float) -> float:
        return round(HEIGHT - BOTTOM - tokens / top * plot_height, 2)

    series = []
    stacked = dict.fromkeys(days, 0)
    for index, ((user, model), entry) in enumerate(ranked):
        name = f"{user} · {model}" if model else user
        drawn = Series(
            name=name, colour=PALETTE[index], total=entry["total"], not_counted=entry["not_counted"]
        )
        for n, day in enumerate(days):
            tokens = entry["days"].get(day, 0)
            if not tokens:
                continue
            base = stacked[day]
            stacked[day] += tokens
            drawn.bars.append(
                Bar(
                    x=round(LEFT + n * slot + (slot - bar_width) / 2, 2),
                    y=y(stacked[day]),
                    width=round(bar_width, 2),
                    height=round(y(base) - y(stacked[day]), 2),
                    title=f"{name}, {day.isoformat()}: {token_text(tokens)} tokens",
                )
            )
        series.append(drawn)

    every = -(-len(days) // MAX_DAY_LABELS)
    day_labels = [
        (round(LEFT + n * slot + slot / 2, 2), day.strftime("%d %b"))
        for n, day in enumerate(days)
        if n % every == 0
    ]
    ticks = [(y(value), token_text(value)) for value in range(0, top + 1, step)]
    busiest = max(days, key=lambda day: per_day[day])
    description = (
        f"Stacked bars, one per day from {first.isoformat()} to {last.isoformat()}, one colour for each of "
        f"{len(series)} users and models. Busiest day: {busiest.isoformat()}, "
        f"{token_text(per_day[busiest])} tokens. "
        + "; ".join(f"{s.name}: {s.total_text} tokens" for s in series)
        + "."
    )
    return Chart(series=series, days=days, ticks=ticks, day_labels=day_labels, description=description)

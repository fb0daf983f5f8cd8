"""Per-user and per-group token budgets and send rates, checked before any model is called.

Usage is summed from the replies themselves (prompt + completion tokens, day and
month in UTC), so there is no counter to drift. Replies whose count was
unavailable (no vocabulary) count the provider's reported usage, else zero.
"""

import time
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import IntegerField, Q, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from chat.models import Budget, Message


class BudgetExceeded(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Limits:
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    sends_per_minute: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.tokens_per_day, self.tokens_per_month, self.sends_per_minute))


def _most_generous(values):
    values = list(values)
    return None if not values or None in values else max(values)


_any_budget: tuple[float, bool] | None = None
ANY_BUDGET_TTL = 5.0


def _budgets_exist() -> bool:
    """Most sites set no budgets; then a send costs no budget queries at all."""
    global _any_budget
    now = time.monotonic()
    if _any_budget is None or _any_budget[0] < now:
        _any_budget = (now + ANY_BUDGET_TTL, Budget.objects.exists())
    return _any_budget[1]


def none_known() -> bool:
    """This process last found no budgets at all, however long ago (chat.early: a send's
    request may go out before its turn is saved). A budget made here since is known at
    once (forget_budgets); one made through another process is found when the turn is
    saved, and that send's early request is abandoned then."""
    return _any_budget is not None and not _any_budget[1]


def learn() -> None:
    """Find out whether budgets exist, if this process does not know (none_known)."""
    if _any_budget is None:
        _budgets_exist()


def forget_budgets(**kwargs) -> None:
    global _any_budget
    _any_budget = None


def limits_for(user_id: int) -> Limits:
    if not _budgets_exist():
        return Limits()
    budgets = list(Budget.objects.filter(Q(user_id=user_id) | Q(group__user__id=user_id)).distinct())
    own = next((b for b in budgets if b.user_id == user_id), None)
    if own is not None:
        return Limits(own.tokens_per_day, own.tokens_per_month, own.sends_per_minute)
    if not budgets:
        return Limits()
    return Limits(
        _most_generous(b.tokens_per_day for b in budgets),
        _most_generous(b.tokens_per_month for b in budgets),
        _most_generous(b.sends_per_minute for b in budgets),
    )


def _tokens_since(user_id: int, since) -> int:
    reported = Coalesce(Cast(KeyTextTransform("prompt_tokens", "usage"), IntegerField()), 0) + Coalesce(
        Cast(KeyTextTransform("completion_tokens", "usage"), IntegerField()), 0
    )
    replies = Message.objects.filter(
        conversation__user_id=user_id, role=Message.Role.ASSISTANT, created_at__gte=since
    )
    counted = replies.filter(prompt_tokens__isnull=False).aggregate(
        total=Sum(Coalesce("prompt_tokens", 0) + Coalesce("completion_tokens", 0))
    )["total"]
    uncounted = replies.filter(Q(prompt_tokens__isnull=True)).aggregate(total=Sum(reported))["total"]
    return (counted or 0) + (uncounted or 0)


def remaining(user_id: int, limits: Limits | None = None) -> dict | None:
    """Tokens left today and this month (None where unlimited); None when no budget applies."""
    limits = limits if limits is not None else limits_for(user_id)
    if not limits:
        return None
    now = timezone.now()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    left = {"tokens_left_today": None, "tokens_left_this_month": None}
    if limits.tokens_per_day is not None:
        left["tokens_left_today"] = max(0, limits.tokens_per_day - _tokens_since(user_id, day))
    if limits.tokens_per_month is not None:
        left["tokens_left_this_month"] = max(
            0, limits.tokens_per_month - _tokens_since(user_id, day.replace(day=1))
        )
    return left


def check(user_id: int) -> dict | None:
    """Raise BudgetExceeded if the user may not send now; else return what remains."""
    limits = limits_for(user_id)
    if not limits:
        return None
    if limits.sends_per_minute is not None:
        recent = Message.objects.filter(
            conversation__user_id=user_id,
            role=Message.Role.USER,
            created_at__gte=timezone.now() - timedelta(minutes=1),
        ).count()
        if recent >= limits.sends_per_minute:
            raise BudgetExceeded(
                "send_rate_exceeded",
                f"You can send {limits.sends_per_minute} messages a minute; wait a moment and try again.",
            )
    left = remaining(user_id, limits)
    if left["tokens_left_today"] == 0:
        raise BudgetExceeded(
            "budget_exceeded", "You have used today's token budget. It resets at midnight UTC."
        )
    if left["tokens_left_this_month"] == 0:
        raise BudgetExceeded("budget_exceeded", "You have used this month's token budget.")
    return left

"""Calendar periods (UTC) that budgets and egress caps reset on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from policies.schema import BudgetPeriod


def period_bounds(period: BudgetPeriod | str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the calendar `period` containing `now`, in UTC.

    Monthly: the 1st 00:00 to the next 1st; weekly: ISO week, Monday 00:00 to the next Monday;
    daily: midnight to midnight.
    """
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    period = BudgetPeriod(period)
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is BudgetPeriod.DAILY:
        return midnight, midnight + timedelta(days=1)
    if period is BudgetPeriod.WEEKLY:
        start = midnight - timedelta(days=now.weekday())
        return start, start + timedelta(days=7)
    start = midnight.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end

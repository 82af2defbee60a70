"""Money already spent, and committed, per experiment and budget period — the input budgets are checked against.

Spent: each resource's price over the part of its running time inside the period. Committed: what a
live resource will still cost before it can be stopped — an HPC pilot or any unit with a walltime
runs to it; a cloud VM is counted for the `commit_hours` the engine needs to notice and drain it.
Counting commitments is what keeps a budget a hard limit rather than a target overshot by the fleet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal

from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.model import ResourceRow, from_micro, row_time

SECONDS_PER_HOUR = Decimal(3600)


def _overlap_seconds(start: datetime, end: datetime, lo: datetime, hi: datetime) -> int:
    return max(0, int((min(end, hi) - max(start, lo)).total_seconds()))


def spend_in_period(
    resources: Iterable[ResourceRow],
    *,
    period_start: datetime,
    period_end: datetime,
    now: datetime,
    commit_hours: float = 1.0,
) -> dict[str, Decimal]:
    """Experiment → USD spent in [period_start, now] plus still committed before period_end."""
    totals: dict[str, Decimal] = {}
    for res in resources:
        if res.experiment is None:
            continue
        price = from_micro(res.price_micro_per_hour)
        if price == 0:
            continue
        start = row_time(res.launched_at) or row_time(res.created_at)
        assert start is not None
        end = row_time(res.released_at) or now
        seconds = _overlap_seconds(start, end, period_start, min(now, period_end))
        if ResourceState(res.state) in LIVE_STATES:
            ahead = res.walltime_hours if res.walltime_hours is not None else commit_hours
            if res.walltime_hours is not None:
                elapsed = max(0.0, (now - start).total_seconds() / 3600)
                ahead = max(0.0, res.walltime_hours - elapsed)
            horizon_end = min(period_end, now + timedelta(hours=ahead))
            seconds += _overlap_seconds(now, horizon_end, now, period_end)
        if seconds:
            totals[res.experiment] = totals.get(res.experiment, Decimal(0)) + price * seconds / SECONDS_PER_HOUR
    return {k: v.quantize(Decimal("0.000001")) for k, v in totals.items()}


def merge_period_keys(by_period: Mapping[str, Mapping[str, Decimal]]) -> dict[str, Decimal]:
    """{"monthly": {"atlas": x}} → {"atlas/monthly": x}: the key form `policies.evaluate` reads."""
    return {f"{exp}/{period}": amount for period, spent in by_period.items() for exp, amount in spent.items()}

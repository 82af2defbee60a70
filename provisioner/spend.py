"""Money already spent, and committed, per experiment and budget period — the input budgets are checked against.

Spent: what the billing model (`accounting.billing`) bills inside the period up to now — the one
definition of money spent, so a create that never launched costs nothing. Committed: what a live
resource will still cost before it can be stopped — an HPC pilot or any unit with a walltime runs
to it; a cloud VM is counted for the `commit_hours` the engine needs to notice and drain it.
Counting commitments is what keeps a budget a hard limit rather than a target overshot by the fleet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal

from accounting.billing import UnitFacts, slices
from provisioner.domain import LIVE_STATES
from provisioner.model import MICRO

_LIVE = frozenset(str(s) for s in LIVE_STATES)


def committed_micro(unit: UnitFacts, *, now: datetime, until: datetime, commit_hours: float = 1.0) -> int:
    """What a live unit will still be charged between `now` and `until`, at the price in force now."""
    if unit.state not in _LIVE or until <= now:
        return 0
    ahead = commit_hours
    if unit.walltime_hours is not None:
        started = unit.charged_from if unit.charged_from is not None and unit.charged_from < now else now
        ahead = max(0.0, unit.walltime_hours - (now - started).total_seconds() / 3600)
    end = min(until, now + timedelta(hours=ahead))
    if end <= now:
        return 0
    seconds = Decimal((end - now).total_seconds())
    return int((Decimal(unit.price_at(now)) * seconds / 3600).to_integral_value())


def spend_in_period(
    units: Iterable[UnitFacts],
    *,
    period_start: datetime,
    period_end: datetime,
    now: datetime,
    commit_hours: float = 1.0,
) -> dict[str, Decimal]:
    """Experiment → USD billed in [period_start, now] plus still committed before period_end.

    `units`: `accounting.billing.load_units(..., include_unbilled=True)` — live units not yet
    launched commit money though nothing is billed for them yet.
    """
    totals: dict[str, int] = {}
    for unit in units:
        if unit.experiment is None:
            continue
        spent = sum(p.amount_micro for p in slices(unit, period_start, min(now, period_end), as_of=now))
        spent += committed_micro(unit, now=now, until=period_end, commit_hours=commit_hours)
        if spent:
            totals[unit.experiment] = totals.get(unit.experiment, 0) + spent
    return {k: (Decimal(v) / MICRO).quantize(Decimal("0.000001")) for k, v in totals.items()}


def merge_period_keys(by_period: Mapping[str, Mapping[str, Decimal]]) -> dict[str, Decimal]:
    """{"monthly": {"atlas": x}} → {"atlas/monthly": x}: the key form `policies.evaluate` reads."""
    return {f"{exp}/{period}": amount for period, spent in by_period.items() for exp, amount in spent.items()}

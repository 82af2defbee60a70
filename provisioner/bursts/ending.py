"""When a burst request ends: its HS23-hours delivered, its duration run, its deadline passed, or its
maximum cost reached — a pure rule over the request and its progress."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from provisioner.bursts.progress import RequestProgress
from provisioner.requests import CONCURRENCY_SLACK, BurstRequestSpec


class EndedBy(enum.StrEnum):
    """Which rule ended a request (stored on it, shown with its status and cost)."""

    DELIVERED = "delivered"  # its HS23-hours were delivered
    HELD = "held"  # its HS23-hours were held by units that report no busy signal (delivery unknown)
    DURATION = "duration"  # its duration has run
    DEADLINE = "deadline"  # its deadline passed
    MAX_COST = "max_cost"  # its maximum cost was reached


@dataclass(frozen=True, slots=True)
class Ending:
    by: EndedBy
    reason: str  # for people: what was asked, what was delivered, what it cost


def work_started(admitted_at: datetime, progress: RequestProgress) -> datetime:
    """When a duration request's clock starts: its first unit's launch, but no later than the boot
    slack the planner allows after admission (capacity that never comes does not stretch it)."""
    latest = admitted_at + CONCURRENCY_SLACK
    first = progress.first_launch
    return min(first, latest) if first is not None else latest


def duration_ends(
    spec: BurstRequestSpec, admitted_at: datetime, progress: RequestProgress
) -> datetime | None:
    if spec.duration_hours is None:
        return None
    return work_started(admitted_at, progress) + timedelta(hours=spec.duration_hours)


def ending(
    spec: BurstRequestSpec, admitted_at: datetime, progress: RequestProgress, now: datetime
) -> Ending | None:
    """The rule that ends the request at `now`, or None while it should go on (first match wins:
    delivered, duration, deadline, maximum cost)."""
    cost = f"${progress.cost_so_far:,.2f} spent"
    if spec.hs23_hours is not None and progress.hs23_hours_done >= spec.hs23_hours:
        if progress.busy_signal:
            return Ending(
                EndedBy.DELIVERED,
                f"done: {progress.hs23_hours_delivered:,.1f} of {spec.hs23_hours:,.1f} HS23-hours delivered; {cost}",
            )
        return Ending(
            EndedBy.HELD,
            f"done: {progress.hs23_hours_held:,.1f} of {spec.hs23_hours:,.1f} HS23-hours held; its units report"
            f" no busy signal, so what they delivered is unknown; {cost}",
        )
    ends = duration_ends(spec, admitted_at, progress)
    if ends is not None and now >= ends:
        return Ending(
            EndedBy.DURATION,
            f"done: its {spec.duration_hours:g} h ran out at {ends:%Y-%m-%d %H:%M} UTC; "
            f"{progress.hs23_hours_delivered:,.1f} HS23-hours delivered; {cost}",
        )
    if spec.deadline is not None and now >= spec.deadline:
        asked = f" of {spec.hs23_hours:,.1f}" if spec.hs23_hours is not None else ""
        return Ending(
            EndedBy.DEADLINE,
            f"ended: deadline {spec.deadline:%Y-%m-%d %H:%M} UTC passed; "
            f"{progress.hs23_hours_delivered:,.1f}{asked} HS23-hours delivered; {cost}",
        )
    if spec.max_cost_usd is not None and progress.cost_committed >= spec.max_cost_usd:
        return Ending(
            EndedBy.MAX_COST,
            f"ended: maximum cost ${spec.max_cost_usd:,.2f} reached ({cost}, "
            f"${progress.cost_committed - progress.cost_so_far:,.2f} more before its units stop); "
            f"{progress.hs23_hours_delivered:,.1f} HS23-hours delivered",
        )
    return None


def max_cost_left(spec: BurstRequestSpec, progress: RequestProgress) -> Decimal | None:
    if spec.max_cost_usd is None:
        return None
    return max(Decimal(0), spec.max_cost_usd - progress.cost_committed)

"""Allocation pacing: the committed-hours ledger of an HPC allocation, its burn line, and what one
more node-hour is worth now.

The ledger (`AllocationLedger`): **settled** node-hours (charged, from sacct: finished jobs and the
elapsed part of running ones), **in flight** (running pilots' remaining walltime), **committed**
(queued pilots' time limits) and **left** (granted − the three). A pilot's hours are booked the
moment it is submitted, so a cycle never funds a new batch with hours running pilots already hold.
EVEN keeps settled + in flight + committed under the burn line (grant × elapsed fraction of the
period) half a planning horizon ahead — booked hours are burnt over the coming horizon, on average
by its middle — and ASAP under the grant; neither ever books more than was granted.
As money: behind the line an hour will expire unused and is worth 0; ahead of it, hours become
scarce and their value rises towards the reference price (what the work would cost elsewhere).
See docs/policy-format.md for the formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from provisioner.domain import AllocationInfo, Pacing

DEFAULT_PACE_TOLERANCE = 0.05  # fraction of the grant an allocation may run ahead before it is "paced"
_MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class PacingStatus:
    pacing: Pacing
    available: bool  # started, not ended, node-hours left
    elapsed_fraction: float  # of the allocation period, 0..1
    target_used: float  # node-hours the even pace would have used by now
    lead: float  # (used − target) / granted: > 0 ahead of the pace, < 0 behind
    paced: bool  # ahead by more than the tolerance: the planner reports "allocation paced"
    value_per_node_hour: Decimal  # USD, never negative


def allocation_available(info: AllocationInfo, now: datetime) -> bool:
    """Offered at all: the period has started, has not ended, and node-hours are left."""
    return info.starts <= now < info.ends and info.node_hours_left > 0


def pacing_status(
    info: AllocationInfo,
    now: datetime,
    reference_price_per_node_hour: Decimal,
    tolerance: float = DEFAULT_PACE_TOLERANCE,
) -> PacingStatus:
    """Where the allocation stands against its pace, and the value of one more node-hour."""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    reference = max(Decimal(0), reference_price_per_node_hour)
    fraction = elapsed_fraction(info, now)
    target = burn_line(info, now)  # the one definition the console and the cost report share
    lead = (info.node_hours_used - target) / info.node_hours_granted if info.node_hours_granted > 0 else 0.0
    available = allocation_available(info, now)
    if not available:
        # an hour that cannot be had is worth what it would displace
        return PacingStatus(info.pacing, False, fraction, target, lead, False, reference.quantize(_MICRO))
    if info.pacing is Pacing.ASAP or lead <= 0:
        return PacingStatus(info.pacing, True, fraction, target, lead, False, Decimal(0))
    # ahead of the pace: rises from 0 through reference/2 at lead == tolerance towards the reference
    share = Decimal(repr(lead)) / (Decimal(repr(lead)) + Decimal(repr(tolerance)))
    value = (reference * share).quantize(_MICRO, rounding=ROUND_HALF_EVEN)
    return PacingStatus(info.pacing, True, fraction, target, lead, lead > tolerance, max(Decimal(0), value))


def allocation_hour_value(
    info: AllocationInfo,
    now: datetime,
    reference_price_per_node_hour: Decimal,
    tolerance: float = DEFAULT_PACE_TOLERANCE,
) -> Decimal:
    """USD value of one node-hour of `info` at `now` under its pacing policy (≥ 0).

    Check `allocation_available` first: an expired or exhausted allocation is not offered, and
    its value here is the full reference price.
    """
    return pacing_status(info, now, reference_price_per_node_hour, tolerance).value_per_node_hour


def elapsed_fraction(info: AllocationInfo, at: datetime) -> float:
    """How much of the allocation's period has passed at `at`, 0..1 (1 for an empty period)."""
    span = (info.ends - info.starts).total_seconds()
    if span <= 0:
        return 1.0
    return min(1.0, max(0.0, (at - info.starts).total_seconds() / span))


def burn_line(info: AllocationInfo, at: datetime) -> float:
    """Node-hours an even burn would have used by `at`: grant × elapsed fraction of the period.
    The pacing plan's target: the planner (`node_hours_on_pace`), the console's allocation view and
    the cost report all read it from here."""
    return info.node_hours_granted * elapsed_fraction(info, at)


def node_hours_on_pace(info: AllocationInfo, now: datetime, horizon_hours: float) -> float:
    """Node-hours new pilots may book now: for EVEN, what keeps settled + in flight + committed under
    the burn line half a horizon ahead (in the last two horizons before the end, everything not yet
    booked); for ASAP, everything not yet booked. 0 when not available."""
    if not allocation_available(info, now):
        return 0.0
    if info.pacing is Pacing.ASAP or info.ends - now <= timedelta(hours=2 * horizon_hours):
        # the last stretch: a pilot booked later could not run a horizon's work before the end, so
        # what is not booked now expires unused — EVEN gives way to using it up
        return info.node_hours_left
    line = burn_line(info, now + timedelta(hours=horizon_hours / 2))
    return min(info.node_hours_left, max(0.0, line - info.node_hours_booked))


@dataclass(frozen=True, slots=True)
class AllocationLedger:
    """One allocation's node-hours now, as an operator reads them."""

    granted: float
    settled: float  # charged (sacct): finished jobs and the elapsed part of running ones
    in_flight: float  # running pilots' remaining walltime
    committed: float  # queued pilots' time limits
    burn_line: float  # what an even burn would have used by now
    ends: datetime

    @property
    def booked(self) -> float:
        return self.settled + self.in_flight + self.committed

    @property
    def left(self) -> float:
        return max(0.0, self.granted - self.booked)


def allocation_ledger(info: AllocationInfo, now: datetime) -> AllocationLedger:
    return AllocationLedger(
        granted=info.node_hours_granted,
        settled=info.node_hours_used,
        in_flight=info.node_hours_in_flight,
        committed=info.node_hours_committed,
        burn_line=burn_line(info, now),
        ends=info.ends,
    )


def pilot_hours_until_end(info: AllocationInfo, now: datetime) -> float:
    """The longest time limit a pilot submitted now may have: nothing may run past the end date."""
    return max(0.0, (info.ends - now).total_seconds() / 3600)


def booked_hours(limit_hours: float, *, started: datetime | None, now: datetime, ends: datetime) -> float:
    """Hours one node of a live pilot will still be charged: its time limit left (the whole limit
    while it waits in the queue), never past the allocation's end date."""
    begin = started if started is not None else now
    until = min(begin + timedelta(hours=limit_hours), ends)
    return max(0.0, (until - now).total_seconds() / 3600)

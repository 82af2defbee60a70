"""Allocation pacing as money: what one node-hour of an HPC allocation is worth right now.

EVEN pacing compares the node-hours used with the even-burn target (grant × elapsed fraction).
Behind the target, hours will expire unused and are worth 0; ahead of it, hours become scarce and
their value rises towards the reference price (what the work would cost elsewhere). ASAP pacing is
worth 0 until the allocation is used up. See docs/policy-format.md for the formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
    span = (info.ends - info.starts).total_seconds()
    elapsed = (now - info.starts).total_seconds()
    fraction = min(1.0, max(0.0, elapsed / span)) if span > 0 else 1.0
    target = info.node_hours_granted * fraction
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


def node_hours_on_pace(info: AllocationInfo, now: datetime, horizon_hours: float) -> float:
    """Node-hours that can be used between now and now + horizon while staying on pace (EVEN),
    or everything left (ASAP). 0 when not available."""
    if not allocation_available(info, now):
        return 0.0
    if info.pacing is Pacing.ASAP:
        return info.node_hours_left
    span = (info.ends - info.starts).total_seconds()
    until = (now - info.starts).total_seconds() + horizon_hours * 3600.0
    target = info.node_hours_granted * min(1.0, max(0.0, until / span))
    return min(info.node_hours_left, max(0.0, target - info.node_hours_used))

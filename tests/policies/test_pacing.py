"""Allocation pacing as money: hours that would expire are free, hours burnt ahead of pace get dear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import allocation_available, allocation_hour_value, node_hours_on_pace, pacing_status
from provisioner.domain import AllocationInfo, Pacing

START = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)  # 91 days
HALFWAY = START + (END - START) / 2
REFERENCE = Decimal("3.1744")  # USD per node-hour on the cheapest cloud alternative


def grant(used: float, pacing: Pacing = Pacing.EVEN, granted: float = 10_000) -> AllocationInfo:
    return AllocationInfo("a", "m1", "regular", None, granted, used, START, END, pacing)


def test_behind_schedule_an_hour_is_worth_nothing() -> None:
    assert allocation_hour_value(grant(used=3000), HALFWAY, REFERENCE) == 0  # target 5,000


def test_ahead_of_schedule_an_hour_is_worth_more_the_further_ahead() -> None:
    values = [
        allocation_hour_value(grant(used=u), HALFWAY, REFERENCE) for u in (5000, 5200, 5500, 6000, 9000)
    ]
    assert values[0] == 0
    assert values == sorted(values) and len(set(values)) == len(values)
    assert values[-1] < REFERENCE  # rises towards, never beyond, what it displaces
    assert values[-1] > REFERENCE * Decimal("0.85")


def test_ahead_by_more_than_the_tolerance_is_paced() -> None:
    assert not pacing_status(grant(used=5400), HALFWAY, REFERENCE, tolerance=0.05).paced  # 4% ahead
    status = pacing_status(grant(used=5600), HALFWAY, REFERENCE, tolerance=0.05)  # 6% ahead
    assert status.paced and status.available
    assert status.value_per_node_hour > REFERENCE / 2  # at lead == tolerance the value is half


def test_asap_is_free_until_exhausted_then_not_offered() -> None:
    assert allocation_hour_value(grant(used=9000, pacing=Pacing.ASAP), HALFWAY, REFERENCE) == 0
    exhausted = grant(used=10_000, pacing=Pacing.ASAP)
    assert not allocation_available(exhausted, HALFWAY)
    assert not pacing_status(exhausted, HALFWAY, REFERENCE).available


def test_expired_or_not_started_allocations_are_not_offered() -> None:
    info = grant(used=100)
    assert not allocation_available(info, END)
    assert not allocation_available(info, START - timedelta(seconds=1))
    assert allocation_available(info, START)
    assert node_hours_on_pace(info, END + timedelta(days=1), 24) == 0


def test_on_pace_node_hours_allow_catching_up_but_not_running_ahead() -> None:
    behind = grant(used=3000)
    # catch up to the target 24 h from now: 5,000 + 10,000 × 24 h / 2,184 h − 3,000
    expected = 10_000 * ((HALFWAY - START).total_seconds() / 3600 + 24) / 2184 - 3000
    assert abs(node_hours_on_pace(behind, HALFWAY, 24) - expected) < 1e-6
    assert node_hours_on_pace(grant(used=7000), HALFWAY, 24) == 0
    assert node_hours_on_pace(grant(used=9990, pacing=Pacing.ASAP), HALFWAY, 24) == 10


@given(
    used=st.floats(0, 20_000, allow_nan=False),
    fraction=st.floats(0, 1, allow_nan=False),
    reference=st.decimals(0, 100, places=4),
    pacing=st.sampled_from(Pacing),
)
@settings(max_examples=300, deadline=None)
def test_value_is_never_negative_nor_above_the_reference(
    used: float, fraction: float, reference: Decimal, pacing: Pacing
) -> None:
    now = START + (END - START) * fraction
    value = allocation_hour_value(grant(used=used, pacing=pacing), now, reference)
    assert Decimal(0) <= value <= reference

"""Allocation pacing as money: hours that would expire are free, hours burnt ahead of pace get dear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import allocation_available, allocation_hour_value, node_hours_on_pace, pacing_status
from policies.pacing import allocation_ledger, booked_hours, burn_line
from provisioner.domain import AllocationInfo, Pacing

START = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)  # 91 days
HALFWAY = START + (END - START) / 2
REFERENCE = Decimal("3.1744")  # USD per node-hour on the cheapest cloud alternative


def grant(
    used: float,
    pacing: Pacing = Pacing.EVEN,
    granted: float = 10_000,
    *,
    in_flight: float = 0.0,
    committed: float = 0.0,
) -> AllocationInfo:
    return AllocationInfo("a", "m1", "regular", None, granted, used, START, END, pacing, in_flight, committed)


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
    # catch up to the line half the 24 h horizon from now: 5,000 + 10,000 × 12 h / 2,184 h − 3,000
    expected = 10_000 * ((HALFWAY - START).total_seconds() / 3600 + 12) / 2184 - 3000
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


def test_running_and_queued_pilots_hours_count_before_a_new_batch_is_funded() -> None:
    # 5,000 settled at half-time is on the line; running pilots hold 20 more, queued ones 10
    booked = grant(used=5000, in_flight=20, committed=10)
    line_ahead = burn_line(booked, HALFWAY + timedelta(hours=12))  # 5,054.9
    assert node_hours_on_pace(booked, HALFWAY, 24) == line_ahead - 5030
    # pilots already holding the line's lead: nothing more this round, although settled is on pace
    assert node_hours_on_pace(grant(used=5000, in_flight=40, committed=20), HALFWAY, 24) == 0
    ledger = allocation_ledger(booked, HALFWAY)
    assert (ledger.settled, ledger.in_flight, ledger.committed, ledger.left) == (5000, 20, 10, 4970)
    assert ledger.burn_line == 5000


def test_asap_never_books_more_than_granted() -> None:
    assert node_hours_on_pace(grant(9900, Pacing.ASAP, in_flight=60, committed=30), HALFWAY, 24) == 10
    assert node_hours_on_pace(grant(9900, Pacing.ASAP, in_flight=80, committed=30), HALFWAY, 24) == 0
    assert not allocation_available(grant(9900, Pacing.ASAP, in_flight=80, committed=30), HALFWAY)


def test_booked_hours_of_a_pilot_never_reach_past_the_end_date() -> None:
    now = END - timedelta(hours=3)
    assert booked_hours(10, started=None, now=now, ends=END) == 3  # queued: its limit, up to the end
    assert booked_hours(2, started=None, now=now, ends=END) == 2
    assert booked_hours(2, started=now - timedelta(hours=0.5), now=now, ends=END) == 1.5  # running
    assert booked_hours(2, started=now - timedelta(hours=3), now=now, ends=END) == 0  # over its limit


@given(
    used=st.floats(0, 12_000, allow_nan=False),
    in_flight=st.floats(0, 3_000, allow_nan=False),
    committed=st.floats(0, 3_000, allow_nan=False),
    fraction=st.floats(0, 1, allow_nan=False),
    horizon=st.floats(0.01, 100, allow_nan=False),
    pacing=st.sampled_from(Pacing),
)
@settings(max_examples=300, deadline=None)
def test_new_pilots_never_book_past_the_grant_nor_even_past_the_line(
    used: float, in_flight: float, committed: float, fraction: float, horizon: float, pacing: Pacing
) -> None:
    info = grant(used, pacing, in_flight=in_flight, committed=committed)
    now = START + (END - START) * fraction
    more = node_hours_on_pace(info, now, horizon)
    assert more >= 0
    assert info.node_hours_booked + more <= info.node_hours_granted + 1e-6 or more == 0
    if pacing is Pacing.EVEN and more > 0 and END - now > timedelta(hours=2 * horizon):
        assert info.node_hours_booked + more <= burn_line(info, now + timedelta(hours=horizon / 2)) + 1e-6


def test_even_books_what_is_left_in_the_last_two_horizons_before_the_end() -> None:
    near_end = END - timedelta(hours=40)  # within two 24 h horizons: what is not booked now expires
    behind_a_little = grant(used=9000, in_flight=200, committed=100)
    assert node_hours_on_pace(behind_a_little, near_end, 24) == pytest.approx(700)
    assert node_hours_on_pace(behind_a_little, END - timedelta(hours=60), 24) < 700

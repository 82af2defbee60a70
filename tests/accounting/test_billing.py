"""The billing model: every billable unit-second billed once, in its month, at the price in force."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import Session

from accounting.billing import UnitFacts, load_units, slices, spent_micro, unit_facts, usage, usage_by
from accounting.period import Month
from provisioner.model import EventRow, ResourceRow

T0 = datetime(2026, 10, 20, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
FAR = datetime(2027, 6, 1, tzinfo=UTC)


def unit(**over: Any) -> UnitFacts:
    values: dict[str, Any] = {
        "resource_id": "r1",
        "experiment": "atlas",
        "backend": "aws",
        "offering_id": "aws:us-east-1:m7i.2xlarge:spot",
        "market": "spot",
        "cores": 8,
        "gpus": 0,
        "hs23_per_core": 12.5,
        "price_micro_per_hour": 400_000,
        "charged_from": T0,
        "charged_until": T0 + timedelta(hours=2),
    }
    values.update(over)
    return UnitFacts(**values)


def row(rid: str = "r1", **over: Any) -> ResourceRow:
    values: dict[str, Any] = {
        "id": rid,
        "backend": "aws",
        "offering_id": "aws:us-east-1:m7i.2xlarge:spot",
        "market": "spot",
        "experiment": "atlas",
        "state": "released",
        "idempotency_token": f"tok-{rid}",
        "price_micro_per_hour": 400_000,
        "cores": 8,
        "hs23_per_core": 12.5,
        "created_at": T0 - timedelta(minutes=5),
        "updated_at": T0,
        "state_since": T0,
        "launched_at": T0,
        "released_at": T0 + timedelta(hours=2),
    }
    values.update(over)
    return ResourceRow(**values)


def exact_micro(price: int, seconds: float) -> int:
    return round(price * seconds / 3600)


# ---- strategies: random units across month boundaries, with busy changes and spot price changes ----

offsets = st.integers(min_value=0, max_value=120 * 86_400)


@st.composite
def units(draw: st.DrawFn, rid: str = "r") -> UnitFacts:
    start = T0 + timedelta(seconds=draw(offsets), microseconds=draw(st.integers(0, 999_999)))
    length = timedelta(seconds=draw(st.integers(1, 70 * 86_400)))
    live = draw(st.booleans())
    changes = sorted(draw(st.lists(st.integers(-3600, 70 * 86_400), max_size=8)))
    busy = tuple((start + timedelta(seconds=s), i % 2 == 0) for i, s in enumerate(changes))
    prices = sorted(
        draw(st.lists(st.tuples(st.integers(-3600, 70 * 86_400), st.integers(0, 9_000_000)), max_size=5))
    )
    return unit(
        resource_id=rid,
        charged_from=start,
        charged_until=None if live else start + length,
        busy_changes=busy,
        busy_now=draw(st.booleans()),
        price_micro_per_hour=draw(st.integers(0, 40_000_000)),
        price_changes=tuple((start + timedelta(seconds=s), p) for s, p in prices),
        walltime_hours=draw(st.none() | st.floats(0.5, 2000)),
    )


@given(units(), st.integers(0, 200 * 86_400))
def test_the_months_of_a_unit_sum_to_its_billable_time_and_money(u: UnitFacts, as_of_s: int) -> None:
    as_of = T0 + timedelta(seconds=as_of_s)
    whole = slices(u, datetime.min.replace(tzinfo=UTC), FAR, as_of=as_of)
    span = u.span(as_of)
    by_month = usage_by(whole, lambda s: s.month)
    if span is None:
        assert whole == [] and by_month == {}
        return
    billable = (span[1] - span[0]).total_seconds()
    assert abs(sum(m.billable_seconds for m in by_month.values()) - billable) < 1e-3
    # money over the months = ∫ price dt over the billable time, rounded once (not once per month)
    assert sum(m.amount_micro for m in by_month.values()) == u.cost_micro(span[1])
    month = Month.of(span[0])
    while month.start < span[1]:  # each month billed on its own gives the same parts
        alone = usage(slices(u, month.start, month.end, as_of=as_of))
        assert alone.amount_micro == by_month[month].amount_micro
        month = month.next()


@given(units())
def test_constant_price_money_equals_price_times_billable_time(u: UnitFacts) -> None:
    u = UnitFacts(**{**{f: getattr(u, f) for f in UnitFacts.__dataclass_fields__}, "price_changes": ()})
    as_of = FAR
    span = u.span(as_of)
    total = usage(slices(u, T0 - timedelta(days=1), FAR, as_of=as_of))
    if span is None:
        assert total.amount_micro == 0
        return
    seconds = (span[1] - span[0]).total_seconds()
    assert abs(total.amount_micro - exact_micro(u.price_micro_per_hour, seconds)) <= 1


@given(units(), st.lists(st.integers(0, 200 * 86_400), min_size=1, max_size=6))
def test_no_unit_second_is_billed_twice_or_never_whatever_the_cuts(u: UnitFacts, cuts_s: list[int]) -> None:
    as_of = FAR
    span = u.span(as_of)
    cuts = sorted({T0 - timedelta(days=1), FAR, *(T0 + timedelta(seconds=c) for c in cuts_s)})
    pieces = [p for a, b in itertools.pairwise(cuts) for p in slices(u, a, b, as_of=as_of)]
    if span is None:
        assert pieces == []
        return
    pieces.sort(key=lambda p: p.start)
    assert pieces[0].start == span[0] and pieces[-1].end == span[1]
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start  # contiguous: no gap, no overlap
    assert all(p.month == Month.of(p.end - timedelta(microseconds=1)) for p in pieces)  # inside one month
    assert sum(p.amount_micro for p in pieces) == u.cost_micro(span[1])


@given(st.lists(units(), min_size=1, max_size=6), st.integers(0, 200 * 86_400))
def test_fleet_money_is_the_sum_of_its_units_and_busy_plus_idle_is_all(
    fleet: list[UnitFacts], as_of_s: int
) -> None:
    fleet = [UnitFacts(**{**{f: getattr(u, f) for f in UnitFacts.__dataclass_fields__}, "resource_id": f"r{i}"})
             for i, u in enumerate(fleet)]  # fmt: skip
    as_of = T0 + timedelta(seconds=as_of_s)
    pieces = [p for u in fleet for p in slices(u, T0 - timedelta(days=1), FAR, as_of=as_of)]
    total = usage(pieces)
    assert total.amount_micro == spent_micro(fleet, T0 - timedelta(days=1), FAR, as_of=as_of)
    assert total.busy_micro + total.idle_micro == total.amount_micro
    assert total.hs23_hours_delivered <= total.hs23_hours_held + 1e-6
    per_unit = usage_by(pieces, lambda p: p.unit.resource_id)
    assert sum(u.amount_micro for u in per_unit.values()) == total.amount_micro


# ---- examples: what the issue measured -----------------------------------------------------------


def test_idle_time_before_the_first_job_is_paid_idle_time() -> None:
    u = unit(busy_changes=((T0 + timedelta(minutes=30), True), (T0 + timedelta(minutes=90), False)))
    total = usage(slices(u, T0, NOV, as_of=NOV))
    assert total.amount_micro == 800_000
    assert total.idle_micro == 400_000  # 30 min before the first job + 30 min after the last
    assert total.busy_seconds == 3600
    assert total.hs23_hours_delivered == 100.0 and total.hs23_hours_held == 200.0


def test_a_pilot_alive_at_month_close_gives_each_month_its_part() -> None:
    u = unit(market="allocation", price_micro_per_hour=0, charged_from=NOV - timedelta(hours=6),
             charged_until=None, walltime_hours=24)  # fmt: skip
    as_of = NOV + timedelta(hours=30)
    months = usage_by(slices(u, NOV - timedelta(days=31), FAR, as_of=as_of), lambda s: str(s.month))
    assert months["2026-10"].node_hours == 6.0
    assert months["2026-11"].node_hours == 18.0  # to its walltime, not to "now"


def test_spot_price_in_force_over_each_interval() -> None:
    u = unit(price_changes=((T0 + timedelta(hours=1), 1_000_000),))
    pieces = slices(u, T0, NOV, as_of=NOV)
    assert [p.amount_micro for p in pieces] == [400_000, 1_000_000]
    assert [p.price_micro_per_hour for p in pieces] == [400_000, 1_000_000]


def test_a_create_that_never_launched_is_billed_nothing() -> None:
    failed = row(state="failed", launched_at=None, released_at=None, state_since=T0 + timedelta(minutes=3))
    assert unit_facts(failed).charged_from is None
    assert slices(unit_facts(failed), T0, FAR, as_of=FAR) == []


def test_a_unit_drained_while_provisioning_that_ran_jobs_is_billed_from_its_first_job() -> None:
    drained = row(launched_at=None, released_at=T0 + timedelta(hours=3))
    events = [("resource.busy", T0 + timedelta(hours=1), {"busy": True})]
    facts = unit_facts(drained, events)
    assert facts.charged_from == T0 + timedelta(hours=1) and facts.launch_estimated
    assert usage(slices(facts, T0, FAR, as_of=FAR)).amount_micro == 800_000


def test_a_lost_unit_stops_being_billed_when_found_lost_not_when_released() -> None:
    lost = row(released_at=T0 + timedelta(hours=10))
    events = [
        ("resource.state", T0, {"to": "running"}),
        ("resource.state", T0 + timedelta(hours=1), {"to": "lost"}),
        ("resource.state", T0 + timedelta(hours=10), {"to": "released"}),
    ]
    assert unit_facts(lost, events).charged_until == T0 + timedelta(hours=1)
    back = [*events[:2], ("resource.state", T0 + timedelta(hours=2), {"to": "running"}), events[2]]
    assert unit_facts(lost, back).charged_until == T0 + timedelta(hours=10)  # it was listed again


def test_load_units_reads_rows_and_events_and_skips_phantoms(session: Session) -> None:
    session.add(row("ran"))
    session.add(row("phantom", state="failed", launched_at=None, released_at=None))
    session.add(row("drained", launched_at=None, released_at=T0 + timedelta(hours=2)))
    session.add(
        EventRow(at=T0 + timedelta(hours=1), kind="resource.busy", subject="drained", payload={"busy": True})
    )
    session.commit()
    found = load_units(session, T0 - timedelta(days=1), FAR, as_of=FAR)
    assert [u.resource_id for u in found] == ["drained", "ran"]
    assert spent_micro(found, T0, FAR, as_of=FAR) == 800_000 + 400_000

"""Burst requests finish: delivered, duration run, deadline passed or max cost reached — and their demand goes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine
from sqlmodel import Session, select

from provisioner.bursts.ending import EndedBy
from provisioner.bursts.repository import settle_requests
from provisioner.db import open_database
from provisioner.model import EventRow, ResourceRow, to_micro
from provisioner.requests import Admission, BurstRequestSpec, demand_group_for, record_admission, view

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
H = timedelta(hours=1)


def admitted(db: Engine, request_id: str, spec: BurstRequestSpec, at: datetime = T0) -> None:
    group = demand_group_for(request_id, spec, admitted_at=at)
    record_admission(db, request_id, spec, Admission(True, "ok", Decimal(1), group), now=at)


def unit(
    db: Engine,
    request_id: str,
    n: int,
    *,
    launched: datetime,
    busy_from: datetime | None = None,
    released: datetime | None = None,
    price: str = "1.00",
    cores: int = 8,
    hs23_per_core: float = 10.0,
) -> None:
    with Session(db) as s:
        s.add(
            ResourceRow(
                id=f"{request_id}-u{n}", backend="sim", offering_id="o", market="on_demand",
                group_id=f"request:{request_id}", experiment="atlas", request_id=request_id,
                state="released" if released else "running", idempotency_token=f"{request_id}-{n}",
                price_micro_per_hour=to_micro(Decimal(price)), cores=cores, hs23_per_core=hs23_per_core,
                busy=busy_from is not None and released is None, created_at=launched, updated_at=launched,
                state_since=launched, launched_at=launched, released_at=released,
            )
        )  # fmt: skip
        if busy_from is not None:
            s.add(
                EventRow(
                    at=busy_from, kind="resource.busy", subject=f"{request_id}-u{n}", payload={"busy": True}
                )
            )
        s.commit()


def test_an_hs23_hours_request_ends_when_its_work_is_delivered(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    admitted(db, "r1", BurstRequestSpec(experiment="atlas", cores=8, hs23_hours=1600, job_hours=10))
    unit(db, "r1", 1, launched=T0 + 0.1 * H, busy_from=T0 + 0.1 * H)  # 80 HS23-hours an hour
    assert [g.id for g in settle_requests(db, T0 + 10 * H).groups] == ["request:r1"]  # 792 delivered
    assert view(db, "r1", now=T0 + 10 * H).row.status == "running"
    out = settle_requests(db, T0 + 20.2 * H)  # 1,608 delivered
    assert out.groups == [] and [f.ending.by for f in out.finished] == [EndedBy.DELIVERED]
    row = view(db, "r1", now=T0 + 20.2 * H).row
    assert (row.status, row.ended_by) == ("done", "delivered")
    assert "1,608.0 of 1,600.0 HS23-hours delivered" in row.reason and "$20.10 spent" in row.reason
    assert settle_requests(db, T0 + 30 * H).groups == []  # stays done: nothing rebuilt


def test_idle_time_is_not_delivered_work(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    admitted(db, "r2", BurstRequestSpec(experiment="atlas", cores=8, hs23_hours=160, job_hours=2))
    unit(db, "r2", 1, launched=T0, busy_from=T0 + 4 * H)  # idle four hours, then busy
    out = settle_requests(db, T0 + 5 * H)  # 400 HS23-hours held, 80 delivered
    assert out.finished == [] and [g.jobs for g in out.groups] == [1]
    out = settle_requests(db, T0 + 6 * H)  # 160 delivered
    assert [f.ending.by for f in out.finished] == [EndedBy.DELIVERED]


def test_units_with_no_busy_signal_end_the_request_when_its_hs23_hours_are_held(sqlite_url: str) -> None:
    """A cloud VM that never reports work must not keep a request running (and paying) for ever."""
    db = open_database(sqlite_url)
    admitted(db, "r8", BurstRequestSpec(experiment="atlas", cores=8, hs23_hours=160, job_hours=2))
    unit(db, "r8", 1, launched=T0, busy_from=None)
    assert settle_requests(db, T0 + 1.9 * H).finished == []
    out = settle_requests(db, T0 + 2 * H)  # 160 HS23-hours held
    assert [f.ending.by for f in out.finished] == [EndedBy.HELD] and out.groups == []
    assert "no busy signal" in view(db, "r8").row.reason


def test_an_hs23_hours_request_asks_only_for_the_work_not_yet_delivered(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    spec = BurstRequestSpec(experiment="atlas", cores=8, hs23_hours=8000, job_hours=10)  # 10 slots of 800
    admitted(db, "r3", spec)
    for n in range(4):
        unit(db, "r3", n, launched=T0, busy_from=T0)
    assert [g.jobs for g in settle_requests(db, T0).groups] == [10]
    assert [g.jobs for g in settle_requests(db, T0 + 5 * H).groups] == [8]  # 1,600 delivered, 6,400 left


def test_a_duration_request_ends_when_its_duration_has_run_from_its_first_launch(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    admitted(db, "r4", BurstRequestSpec(experiment="atlas", cores=16, duration_hours=2))
    unit(db, "r4", 1, launched=T0 + 0.25 * H, busy_from=T0 + 0.25 * H)
    groups = settle_requests(db, T0 + 1.25 * H).groups
    assert [round(g.walltime_hours, 3) for g in groups] == [1.0]  # an hour of its two is left
    assert settle_requests(db, T0 + 2.2 * H).finished == []
    out = settle_requests(db, T0 + 2.25 * H)
    assert out.groups == [] and out.finished[0].ending.by is EndedBy.DURATION
    assert view(db, "r4").row.ended_by == "duration"


def test_a_duration_request_that_never_got_capacity_ends_after_its_boot_slack_and_duration(
    sqlite_url: str,
) -> None:
    db = open_database(sqlite_url)
    admitted(db, "r5", BurstRequestSpec(experiment="atlas", cores=16, duration_hours=2))
    assert settle_requests(db, T0 + 2.9 * H).finished == []
    assert settle_requests(db, T0 + 3 * H).finished[0].ending.by is EndedBy.DURATION


def test_a_request_ends_when_its_deadline_passes(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    spec = BurstRequestSpec(experiment="atlas", cores=8, hs23_hours=10_000, deadline=T0 + 6 * H)
    admitted(db, "r6", spec)
    unit(db, "r6", 1, launched=T0, busy_from=T0)
    assert settle_requests(db, T0 + 5.9 * H).finished == []
    out = settle_requests(db, T0 + 6 * H)
    assert out.groups == [] and out.finished[0].ending.by is EndedBy.DEADLINE
    assert "480.0 of 10,000.0 HS23-hours delivered" in out.finished[0].ending.reason


def test_max_cost_is_enforced_while_the_request_runs_not_only_at_admission(sqlite_url: str) -> None:
    """The issue's case: a $5.58 estimate must not turn into $26.60 and growing."""
    db = open_database(sqlite_url)
    spec = BurstRequestSpec(experiment="atlas", cores=64, hs23_hours=100_000, max_cost_usd=Decimal("6"))
    admitted(db, "r7", spec)
    for n in range(4):
        unit(db, "r7", n, launched=T0, busy_from=T0, price="0.50")  # $2 an hour together
    assert settle_requests(db, T0 + 2 * H).finished == []  # $4 spent, $0.50 committed
    out = settle_requests(db, T0 + 2.8 * H)  # $5.60 spent + $0.50 before the units stop: stop now
    assert out.groups == [] and out.finished[0].ending.by is EndedBy.MAX_COST
    row = view(db, "r7", now=T0 + 2.8 * H).row
    assert row.ended_by == "max_cost" and "maximum cost $6.00 reached" in row.reason
    assert row.cost_so_far_micro == to_micro(Decimal("5.60"))
    with Session(db) as s:
        kinds = [e.kind for e in s.exec(select(EventRow).where(EventRow.subject == "r7"))]
    assert kinds == ["request.admitted", "request.finished"]


def test_a_dry_run_sees_an_ended_request_gone_but_marks_nothing(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    admitted(db, "r9", BurstRequestSpec(experiment="atlas", cores=8, duration_hours=1))
    out = settle_requests(db, T0 + 3 * H, write=False)
    assert out.groups == [] and [f.ending.by for f in out.finished] == [EndedBy.DURATION]
    assert view(db, "r9").row.status == "admitted"
    with Session(db) as s:
        assert not list(s.exec(select(EventRow).where(EventRow.kind == "request.finished")))
    settle_requests(db, T0 + 3 * H)
    assert view(db, "r9").row.status == "done"

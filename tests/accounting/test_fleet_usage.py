"""Usage records from the broker's own resources: kind per market, wall, shape, CPU estimate, live units."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlmodel import Session

from accounting.fleet_usage import busy_seconds, drop_superseded, usage_from_resources
from accounting.usage import import_records, validate_record
from provisioner.domain import AllocationInfo, Arch, Market, Offering, UsageRecord
from provisioner.model import EventRow, ResourceRow, UsageRecordRow

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 10, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
SITE = "UKI-BROKER"


def _offering(oid: str, market: Market, **over: Any) -> Offering:
    backend, region, itype, _ = oid.split(":")
    values: dict[str, Any] = {
        "id": oid, "backend": backend, "provider": backend, "region": region, "instance_type": itype,
        "family": f"{backend}:{itype.split('.')[0]}", "market": market, "cores": 8, "memory_gb": 32.0,
        "arch": Arch.X86_64, "price_per_hour": Decimal("0.40"), "hs23_per_core": 12.5,
    }  # fmt: skip
    values.update(over)
    return Offering(**values)


OFFERINGS = {
    o.id: o
    for o in (
        _offering("aws:us-east-1:m7i.2xlarge:on_demand", Market.ON_DEMAND),
        _offering("gce:us-central1:t2d-standard-16:spot", Market.SPOT, cores=16, memory_gb=64.0,
                  price_per_hour=Decimal("0.20"), hs23_per_core=15.0),
        _offering("polaris:prod:a100x4:allocation", Market.ALLOCATION, provider="slurm", cores=64,
                  memory_gb=512.0, gpu_model="A100", gpu_count=4, price_per_hour=Decimal(0), hs23_per_core=11.0,
                  allocation=AllocationInfo("polaris", "m1", "prod", None, 1000, 0, NOV, DEC)),
        _offering("maxwell:allcpu:epyc7402:backfill", Market.BACKFILL, provider="backfill", cores=48,
                  memory_gb=256.0, price_per_hour=Decimal(0), hs23_per_core=10.0),
    )
}  # fmt: skip


def resource(rid: str, offering_id: str, **over: Any) -> ResourceRow:
    o = OFFERINGS.get(offering_id)
    values: dict[str, Any] = {
        "id": rid,
        "backend": offering_id.split(":")[0],
        "offering_id": offering_id,
        "market": str(o.market) if o else "unknown",
        "experiment": "atlas",
        "state": "released",
        "idempotency_token": f"tok-{rid}",
        "provider_id": f"p-{rid}",
        "price_micro_per_hour": 400_000,
        "cores": o.cores if o else 0,
        "gpus": o.gpu_count if o else 0,
        "hs23_per_core": o.hs23_per_core if o else 0.0,
        "busy": False,
        "created_at": T0 - timedelta(minutes=5),
        "updated_at": T0,
        "state_since": T0,
        "launched_at": T0,
        "released_at": T0 + timedelta(hours=3),
    }
    values.update(over)
    return ResourceRow(**values)


def busy_event(rid: str, at: datetime, busy: bool) -> EventRow:
    return EventRow(at=at, kind="resource.busy", subject=rid, payload={"busy": busy})


def collect(session: Session, *rows: Any, **over: Any) -> dict[str, UsageRecord]:
    for row in rows:
        session.add(row)
    session.commit()
    args: dict[str, Any] = {
        "site": SITE,
        "submit_host": "broker.example.org",
        "offerings": OFFERINGS,
        "now": NOW,
    }
    args.update(over)
    return {r.resource_id or "": r for r in usage_from_resources(session, NOV, DEC, **args)}


def test_each_market_gives_its_kind_of_record_with_wall_shape_and_benchmark(session: Session) -> None:
    got = collect(
        session,
        resource("od", "aws:us-east-1:m7i.2xlarge:on_demand"),
        resource("spot", "gce:us-central1:t2d-standard-16:spot", released_at=T0 + timedelta(minutes=90)),
        resource("pilot", "polaris:prod:a100x4:allocation", experiment="lsst"),
        resource("bf", "maxwell:allcpu:epyc7402:backfill"),
    )
    assert {rid: r.kind for rid, r in got.items()} == {
        "od": "vm",
        "spot": "vm",
        "pilot": "pilot",
        "bf": "backfill",
    }
    od, spot, pilot, bf = got["od"], got["spot"], got["pilot"], got["bf"]
    assert od.record_key == f"{SITE}:vm:od:2026-11" and pilot.record_key == f"{SITE}:pilot:pilot:2026-11"
    assert (od.start_time, od.end_time, od.wall_seconds, od.status) == (
        T0,
        T0 + timedelta(hours=3),
        10800,
        "completed",
    )
    assert spot.wall_seconds == 5400 and spot.cores == 16 and spot.hs23_per_core == 15.0
    assert spot.cloud_type == "gce" and spot.infrastructure == "provisioner:gce" and spot.market == "spot"
    assert spot.memory_kb == 64 * 1024 * 1024
    assert (pilot.cores, pilot.gpu_count, pilot.gpu_model, pilot.hs23_per_core) == (64, 4, "A100", 11.0)
    assert pilot.experiment == "lsst" and pilot.local_job_id == "p-pilot" and pilot.cloud_type is None
    assert (
        bf.cores == 48
        and bf.gpu_count == 0
        and bf.gpu_model is None
        and bf.offering_family == "maxwell:epyc7402"
    )
    for record in got.values():
        assert validate_record(record, now=NOW) == []


def test_resources_that_never_launched_or_ran_outside_the_month_give_no_record(session: Session) -> None:
    got = collect(
        session,
        resource("requested", "aws:us-east-1:m7i.2xlarge:on_demand", state="requested", launched_at=None,
                 released_at=None),
        resource("failed-at-create", "aws:us-east-1:m7i.2xlarge:on_demand", state="released", launched_at=None),
        resource("october", "aws:us-east-1:m7i.2xlarge:on_demand", launched_at=NOV - timedelta(days=3),
                 released_at=NOV - timedelta(days=2)),
        resource("december", "aws:us-east-1:m7i.2xlarge:on_demand", launched_at=DEC + timedelta(hours=1),
                 released_at=DEC + timedelta(hours=2)),
        resource("across", "aws:us-east-1:m7i.2xlarge:on_demand", launched_at=NOV - timedelta(hours=2),
                 released_at=NOV + timedelta(hours=1)),
    )  # fmt: skip
    assert list(got) == ["across"]
    # Each month gets its part of a unit that ran across the month end: November holds the last hour.
    assert got["across"].wall_seconds == 3600 and got["across"].start_time == NOV


def test_a_unit_alive_at_month_close_gives_each_month_exactly_its_part(session: Session) -> None:
    rows = (
        resource("vm", "aws:us-east-1:m7i.2xlarge:on_demand", launched_at=NOV - timedelta(hours=2),
                 released_at=NOV + timedelta(hours=1)),
        resource("pilot", "polaris:prod:a100x4:allocation", launched_at=NOV - timedelta(hours=6),
                 released_at=None, state="running", walltime_hours=24.0),
    )  # fmt: skip
    for row in rows:
        session.add(row)
    session.commit()
    args: dict[str, Any] = {
        "site": SITE,
        "submit_host": "broker.example.org",
        "offerings": OFFERINGS,
        "now": NOW,
    }
    october = {r.resource_id: r for r in usage_from_resources(session, NOV - timedelta(days=31), NOV, **args)}
    november = {r.resource_id: r for r in usage_from_resources(session, NOV, DEC, **args)}
    # the VM's October record stays in October on the server: no end time, created at its October start
    assert (october["vm"].wall_seconds, october["vm"].end_time, october["vm"].status) == (
        7200,
        None,
        "started",
    )
    assert october["vm"].record_key != november["vm"].record_key and november["vm"].wall_seconds == 3600
    # the pilot: 6 h in October (ending inside October), 18 h in November up to its walltime, not to "now"
    assert october["pilot"].wall_seconds == 6 * 3600 and october["pilot"].end_time < NOV  # type: ignore[operator]
    assert november["pilot"].wall_seconds == 18 * 3600
    assert october["pilot"].status == "continued" and november["pilot"].status == "completed"
    assert import_records(session, [*october.values(), *november.values()], now=NOW).problems == []


def test_a_still_running_vm_is_cut_at_now_unless_open_records_are_asked_for(session: Session) -> None:
    live = {"state": "running", "released_at": None, "busy": True}
    rows = (
        resource("vm", "aws:us-east-1:m7i.2xlarge:on_demand", **live),
        resource("pilot", "polaris:prod:a100x4:allocation", **live),
    )
    cut = collect(session, *rows)
    assert (cut["vm"].end_time, cut["vm"].status) == (NOW, "running")
    assert cut["vm"].wall_seconds == int((NOW - T0).total_seconds())
    assert cut["vm"].cpu_seconds is None  # unknown: the broker does not see the jobs' CPU time
    opened = collect(session, open_records=True)
    assert (opened["vm"].end_time, opened["vm"].status) == (None, "started")
    assert opened["vm"].wall_seconds == cut["vm"].wall_seconds
    # APEL job records must have ended: a live pilot is cut at now even when open records are asked for.
    assert (opened["pilot"].end_time, opened["pilot"].status) == (NOW, "running")
    result = import_records(session, opened.values(), now=NOW)
    assert result.problems == [] and result.imported == 2


def test_cpu_time_is_unknown_not_estimated_and_apel_says_so(any_session: Session) -> None:
    """The broker sees busy spells, not CPU time: records carry no CPU time (never busy × cores);
    the cloud record leaves CpuDuration out, a job record sends 0 (the field is mandatory)."""
    from accounting.apel import cloud_values, job_values

    session = any_session
    rid = "vm"
    got = collect(
        session,
        resource(rid, "aws:us-east-1:m7i.2xlarge:on_demand"),  # 10:00 → 13:00, starts idle
        busy_event(rid, T0 + timedelta(minutes=20), True),
        busy_event(rid, T0 + timedelta(hours=2), False),
        busy_event(rid, T0 + timedelta(hours=2, minutes=30), True),
        busy_event("other", T0, True),
        resource("never-busy", "aws:us-east-1:m7i.2xlarge:on_demand"),
        resource("adopted-busy", "aws:us-east-1:m7i.2xlarge:on_demand", busy=True),
    )
    assert {r.cpu_seconds for r in got.values()} == {None}
    assert cloud_values(got[rid])["CpuDuration"] is None
    pilot = replace(got[rid], kind="pilot", local_job_id="42")
    assert job_values(pilot)["CpuDuration"] == 0
    assert import_records(session, got.values(), now=NOW).problems == []


def test_failed_unit_not_yet_released_ends_when_it_failed(session: Session) -> None:
    failed_at = T0 + timedelta(hours=1)
    got = collect(
        session,
        resource(
            "f",
            "aws:us-east-1:m7i.2xlarge:on_demand",
            state="failed",
            state_since=failed_at,
            released_at=None,
        ),
        resource(
            "l", "gce:us-central1:t2d-standard-16:spot", state="lost", state_since=failed_at, released_at=None
        ),
    )
    assert (got["f"].end_time, got["f"].wall_seconds, got["f"].status) == (failed_at, 3600, "failed")
    assert got["l"].status == "lost"


def test_unknown_market_or_vo_is_reported_by_resource_not_imported(session: Session) -> None:
    got = collect(
        session,
        resource(
            "adopted", "aws:us-east-1:weird.large:on_demand", market="unknown", cores=4, hs23_per_core=10.0
        ),
        resource("no-vo", "aws:us-east-1:m7i.2xlarge:on_demand", experiment=None),
        resource("fine", "aws:us-east-1:m7i.2xlarge:on_demand"),
    )
    result = import_records(session, got.values(), known_vos={"atlas"}, now=NOW)
    assert result.imported == 1
    assert {(p.resource_id, p.field) for p in result.problems} == {
        ("adopted", "kind"),
        ("no-vo", "experiment"),
    }


def test_pilot_already_measured_by_slurm_is_not_counted_twice(any_session: Session) -> None:
    session = any_session
    measured = UsageRecord(
        record_key=f"{SITE}:pilot:4242-1763000000", kind="pilot", experiment="lsst", site=SITE,
        submit_host="slurmctld", backend="polaris", start_time=T0, end_time=T0 + timedelta(hours=3),
        wall_seconds=10800, cpu_seconds=1000, cores=64, hs23_per_core=11.0, resource_id="pilot",
    )  # fmt: skip
    assert import_records(session, [measured], now=NOW).problems == []
    rows = (
        resource("pilot", "polaris:prod:a100x4:allocation"),
        resource("vm", "aws:us-east-1:m7i.2xlarge:on_demand"),
    )
    assert list(collect(session, *rows)) == ["vm"]
    assert sorted(collect(session, include_measured=True)) == ["pilot", "vm"]


def test_estimate_stored_before_slurm_measured_the_pilot_is_dropped(session: Session) -> None:
    got = collect(
        session,
        resource("pilot", "polaris:prod:a100x4:allocation"),
        resource("vm", "aws:us-east-1:m7i.2xlarge:on_demand"),
    )
    import_records(session, got.values(), now=NOW)
    assert drop_superseded(session, NOV, DEC, site=SITE, now=NOW) == []  # nothing measured yet
    measured = replace(got["pilot"], record_key=f"{SITE}:pilot:4242-1763000000", cpu_seconds=1000)
    import_records(session, [measured], now=NOW)
    assert drop_superseded(session, NOV, DEC, site=SITE, now=NOW) == [f"{SITE}:pilot:pilot:2026-11"]
    keys = set(session.execute(select(UsageRecordRow.record_key)).scalars())  # type: ignore[call-overload]
    assert keys == {f"{SITE}:vm:vm:2026-11", f"{SITE}:pilot:4242-1763000000"}


def test_importing_the_fleet_usage_twice_changes_nothing(session: Session) -> None:
    got = collect(
        session,
        resource("a", "aws:us-east-1:m7i.2xlarge:on_demand"),
        resource("b", "polaris:prod:a100x4:allocation"),
    )
    import_records(session, got.values(), now=NOW)
    again = collect(session)  # its own stored records are not mistaken for Slurm's measurements
    assert again == got
    import_records(session, again.values(), now=NOW)
    assert session.execute(select(func.count()).select_from(UsageRecordRow)).scalar_one() == 2


_spells = st.lists(st.tuples(st.integers(-600, 4000), st.booleans()), max_size=12)


@given(_spells, st.booleans())
def test_busy_and_idle_time_add_up_to_the_run(events: list[tuple[int, bool]], busy_now: bool) -> None:
    start, stop = T0, T0 + timedelta(seconds=3600)
    timed = [(T0 + timedelta(seconds=s), b) for s, b in events]
    inverted = [(t, not b) for t, b in timed]
    busy = busy_seconds(timed, busy_now=busy_now, start=start, stop=stop)
    idle = busy_seconds(inverted, busy_now=not busy_now, start=start, stop=stop)
    assert 0 <= busy <= 3600
    assert busy + idle == 3600

"""Random fleets across month ends: usage records give each month its part, and APEL keys never collide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, SQLModel, create_engine

from accounting.apel import cloud_values, job_values, summaries_from_groups, vm_uuid
from accounting.billing import load_units, slices, usage_by
from accounting.fleet_usage import usage_from_resources
from accounting.period import Month
from accounting.summaries import job_groups, sync_counts
from accounting.usage import import_records
from tests.accounting.test_fleet_usage import OFFERINGS, SITE, resource

START = datetime(2026, 9, 20, tzinfo=UTC)
NOW = datetime(2027, 1, 10, tzinfo=UTC)
MONTHS = [Month(2026, 9), Month(2026, 10), Month(2026, 11), Month(2026, 12), Month(2027, 1)]
OFFERING_IDS = sorted(OFFERINGS)

unit_spec = st.tuples(
    st.sampled_from(OFFERING_IDS),
    st.integers(0, 100 * 86_400),  # launch, seconds after START
    st.integers(60, 60 * 86_400),  # run length
    st.booleans(),  # still live at NOW
)


def _measurement_month(values: dict[str, object]) -> Month:
    """Where the APEL server files a cloud record: EndTime when completed, else RecordCreateTime."""
    when = values["EndTime"] if values["Status"] == "completed" else values["RecordCreateTime"]
    assert isinstance(when, datetime)
    return Month.of(when)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(unit_spec, min_size=1, max_size=8))
def test_each_month_gets_its_part_and_apel_keys_never_collide(
    specs: list[tuple[str, int, int, bool]],
) -> None:
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        for i, (oid, launch_s, length_s, live) in enumerate(specs):
            launched = START + timedelta(seconds=launch_s)
            released = launched + timedelta(seconds=length_s)
            walltime = 48.0 if "allocation" in oid else None
            if live and released > NOW:
                over = {"state": "running", "released_at": None}
            else:
                over = {"state": "released", "released_at": min(released, NOW)}
            session.add(resource(f"u{i}", oid, launched_at=launched, created_at=launched, walltime_hours=walltime,
                                 **over))  # fmt: skip
        session.commit()
        args = {"site": SITE, "submit_host": "broker.example.org", "offerings": OFFERINGS, "now": NOW}
        records = [r for m in MONTHS for r in usage_from_resources(session, m.start, m.end, open_records=True,
                                                                    **args)]  # type: ignore[arg-type]  # fmt: skip
        units = load_units(session, MONTHS[0].start, MONTHS[-1].end, as_of=NOW)
        billed = usage_by(
            [p for u in units for p in slices(u, START, NOW, as_of=NOW)], lambda p: p.unit.resource_id
        )
        # the months of a unit sum to its billable time, record by record
        walls: dict[str, int] = {}
        for r in records:
            walls[r.resource_id or ""] = walls.get(r.resource_id or "", 0) + r.wall_seconds
        assert walls.keys() == billed.keys()
        for rid, use in billed.items():
            assert abs(walls[rid] - use.billable_seconds) <= 2 * len(MONTHS)  # whole seconds per record
        # APEL keys: cloud (VMUUID, month) and job (Site, LocalJobId, EndTime) are unique, and each
        # cloud record is filed by the server in the month it describes
        cloud_keys = []
        job_keys = []
        for r in records:
            month = Month.of(r.start_time)
            if r.kind == "vm":
                values = cloud_values(r)
                assert _measurement_month(values) == month, r
                cloud_keys.append((vm_uuid(r), month))
            else:
                values = job_values(r)
                end = values["EndTime"]
                assert isinstance(end, datetime) and Month.of(end) == month, r
                job_keys.append((values["Site"], values["LocalJobId"], end))
        assert len(cloud_keys) == len(set(cloud_keys))
        assert len(job_keys) == len(set(job_keys))
        # summaries' jobs equal sync records' jobs, month by month
        assert import_records(session, records, now=NOW).problems == []
        for m in MONTHS:
            summaries = summaries_from_groups(job_groups(session, m), m.year, m.month)
            assert sum(s.jobs for s in summaries) == sum(c.jobs for c in sync_counts(session, m))
    engine.dispose()

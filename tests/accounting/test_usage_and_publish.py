"""Usage validation and import, publishing a month to the dirq queue, idempotency, bad usage kept out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dirq.QueueSimple import QueueSimple
from sqlalchemy import func, select
from sqlmodel import Session

from accounting.period import Month
from accounting.publish import DEFAULT_KINDS, FutureMonth, Kind, publish_month
from accounting.summaries import job_groups
from accounting.usage import USAGE, import_records, validate_record
from provisioner.model import PublishedSummaryRow, UsageRecordRow
from tests.accounting.apel_loader import load_message
from tests.accounting.conftest import OCT, job, vm

OCTOBER = Month(2026, 10)
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def problems_of(record: object) -> set[str]:
    return {p.field for p in validate_record(record, known_vos={"atlas", "cms"}, now=NOW)}  # type: ignore[arg-type]


def test_bad_usage_is_reported_with_field_and_resource() -> None:
    assert problems_of(job(1)) == set()
    assert problems_of(job(1, end_time=None)) == {"end_time"}
    assert problems_of(job(1, wall_seconds=-5)) == {"wall_seconds"}
    assert problems_of(job(1, cpu_seconds=7200 * 8 * 2)) == {"cpu_seconds"}
    assert problems_of(job(1, hs23_per_core=None)) == {"hs23_per_core"}
    assert problems_of(job(1, experiment="unknownvo")) == {"experiment"}
    assert problems_of(job(1, wall_seconds=3 * 3600)) == {"wall_seconds"}  # longer than end − start
    late = job(1)
    assert problems_of(job(1, start_time=late.end_time + timedelta(hours=1))) >= {"end_time"}  # type: ignore[operator]
    [problem] = validate_record(job(1, end_time=None))
    assert problem.resource_id == "r-1" and problem.record_key == "UKI-TEST:job:1"
    assert "r-1" in str(problem) and "end_time" in str(problem)
    # a VM still running has no end time and that is fine
    assert problems_of(vm(1, end_time=None, status="started")) == set()


def test_import_is_idempotent_and_keeps_bad_records_out(any_session: Session) -> None:
    good = [job(n) for n in range(20)]
    bad = [job(100, end_time=None), job(101, hs23_per_core=None, resource_id="r-bad")]
    first = import_records(any_session, good + bad, known_vos={"atlas"}, now=NOW)
    assert first.imported == 20
    assert {p.record_key for p in first.problems} == {"UKI-TEST:job:100", "UKI-TEST:job:101"}
    assert any(p.resource_id == "r-bad" for p in first.problems)
    again = import_records(any_session, good, now=NOW)
    assert again.imported == 20
    count = any_session.execute(select(func.count()).select_from(UsageRecordRow)).scalar_one()
    assert count == 20
    # a record of a unit still running is updated in place, keyed by record_key
    import_records(any_session, [job(0, status="running")], now=NOW)
    import_records(any_session, [job(0, wall_seconds=3600, cpu_seconds=100)], now=NOW)
    row = any_session.execute(
        select(UsageRecordRow).where(USAGE.c.record_key == "UKI-TEST:job:0")
    ).scalar_one()
    assert row.wall_seconds == 3600
    # a finished one is not overwritten with other figures (tests/accounting/test_duplicates.py)
    refused = import_records(any_session, [job(0, wall_seconds=1800, cpu_seconds=100)], now=NOW)
    assert [p.field for p in refused.problems] == ["record_key"]


def test_sql_groups_give_full_month_totals(any_session: Session) -> None:
    records = [job(n) for n in range(30)]
    records += [job(200, end_time=OCT - timedelta(hours=1), start_time=OCT - timedelta(hours=3))]  # September
    records += [
        job(300, end_time=OCT + timedelta(days=31, hours=1), start_time=OCT + timedelta(days=31))
    ]  # Nov
    import_records(any_session, records, now=NOW)
    [g] = job_groups(any_session, OCTOBER)
    assert g.jobs == 30
    assert g.wall_seconds == 30 * 7200
    assert g.cpu_seconds == 30 * (7200 * 8 - 600)
    assert g.earliest_end == min(r.end_time for r in records[:30])  # type: ignore[type-var]
    assert g.latest_end.tzinfo is not None


def queued(path: Path) -> list[str]:
    """Read the queue the way SSM's sender does: QueueSimple, lock, get."""
    queue = QueueSimple(str(path))
    out = []
    for name in queue:
        assert queue.lock(name)
        data = queue.get(name)
        out.append(data.decode() if isinstance(data, bytes) else data)
        queue.unlock(name)
    return out


def test_publish_writes_dirq_messages_ssm_can_read(session: Session, tmp_path: Path) -> None:
    import_records(
        session, [job(n) for n in range(1500)] + [vm(1, gpu_count=1, gpu_model="NVIDIA A10G"), vm(2)], now=NOW
    )
    kinds = (*DEFAULT_KINDS, Kind.ACCELERATOR)  # the experimental accelerator record only when asked for
    report = publish_month(session, OCTOBER, tmp_path / "outgoing", now=NOW, kinds=kinds)
    by_kind = {r.kind: r for r in report.results}
    assert by_kind[Kind.SUMMARY].records == 1 and by_kind[Kind.SYNC].records == 1
    assert by_kind[Kind.CLOUD].records == 2 and by_kind[Kind.ACCELERATOR].records == 1
    messages = queued(tmp_path / "outgoing")
    assert len(messages) == len(report.queued) == 4
    headers = sorted(m.splitlines()[0] for m in messages if not m.startswith("{"))
    assert headers == [
        "APEL-cloud-message: v0.4",
        "APEL-summary-job-message: v0.2",
        "APEL-sync-message: v0.1",
    ]
    summary = next(m for m in messages if m.startswith("APEL-summary-job-message"))
    _, [record] = load_message(summary)
    assert record["NumberOfJobs"] == 1500 and record["WallDuration"] == 1500 * 7200


def test_publish_twice_sends_identical_full_totals(session: Session, tmp_path: Path) -> None:
    import_records(session, [job(n) for n in range(10)], now=NOW)
    kinds = (Kind.SUMMARY, Kind.NORMALISED, Kind.SYNC)
    first = publish_month(session, OCTOBER, tmp_path / "q1", kinds=kinds, now=NOW)
    second = publish_month(session, OCTOBER, tmp_path / "q2", kinds=kinds, now=NOW)
    assert [r.sha256 for r in first.results] == [r.sha256 for r in second.results]
    assert all(r.changed for r in first.results) and not any(r.changed for r in second.results)
    assert sorted(queued(tmp_path / "q1")) == sorted(queued(tmp_path / "q2"))
    rows = session.execute(select(PublishedSummaryRow)).scalars().all()
    assert {(r.month, r.kind) for r in rows} == {
        ("2026-10", "summary"),
        ("2026-10", "normalised"),
        ("2026-10", "sync"),
    }
    # More usage later in the month: the next summary carries the whole month again, not the delta.
    import_records(session, [job(n) for n in range(10, 15)], now=NOW)
    third = publish_month(session, OCTOBER, tmp_path / "q3", kinds=(Kind.SUMMARY,), now=NOW)
    assert third.results[0].changed
    _, [record] = load_message(queued(tmp_path / "q3")[0])
    assert record["NumberOfJobs"] == 15


def test_bad_stored_usage_is_reported_and_never_published(session: Session, tmp_path: Path) -> None:
    import_records(session, [job(n) for n in range(3)], now=NOW)
    # Written behind the validator's back (another code path): negative CPU and no benchmark.
    session.add(UsageRecordRow(**{**_row(job(50)), "cpu_seconds": -1, "resource_id": "r-neg"}))
    session.add(UsageRecordRow(**{**_row(job(51)), "hs23_per_core": None, "resource_id": "r-nobench"}))
    session.commit()
    report = publish_month(session, OCTOBER, tmp_path / "q", kinds=(Kind.SUMMARY, Kind.JOBS), now=NOW)
    assert {(p.resource_id, p.field) for p in report.problems} == {
        ("r-neg", "cpu_seconds"),
        ("r-nobench", "hs23_per_core"),
    }
    texts = queued(tmp_path / "q")
    assert all("r-neg" not in t and "r-nobench" not in t for t in texts)
    summary = next(t for t in texts if t.startswith("APEL-summary"))
    assert load_message(summary)[1][0]["NumberOfJobs"] == 3


def _row(record: object) -> dict[str, Any]:
    from accounting.usage import record_to_values

    return record_to_values(record)  # type: ignore[arg-type]


def test_publishing_a_future_month_is_refused(session: Session, tmp_path: Path) -> None:
    with pytest.raises(FutureMonth):
        publish_month(session, Month(2027, 1), tmp_path / "q", now=NOW)


def test_outgoing_queue_reads_back_what_was_added(tmp_path: Path) -> None:
    from accounting.dirq_queue import OutgoingQueue

    queue = OutgoingQueue(tmp_path / "q")
    name = queue.add("APEL-sync-message: v0.1\nSite: X\nNumberOfJobs: 1\nMonth: 10\nYear: 2026\n%%\n")
    assert len(queue) == 1
    [(got_name, text)] = list(queue.messages())
    assert got_name == name and text.startswith("APEL-sync-message: v0.1\n")
    # the dirq layout: one hex-named directory holding the message file
    [directory] = [p for p in (tmp_path / "q").iterdir() if p.is_dir()]
    assert len(directory.name) == 8 and any(directory.iterdir())


def test_gpu_usage_of_hpc_pilots_goes_out_as_accelerator_records_linked_to_the_job(
    session: Session, tmp_path: Path
) -> None:
    import json

    pilot = job(
        7, record_key="UKI-TEST:pilot:77", kind="pilot", gpu_count=4, gpu_model="A100", local_job_id="77"
    )
    import_records(session, [pilot, job(8)], now=NOW)
    report = publish_month(session, OCTOBER, tmp_path / "q", now=NOW, kinds=(Kind.ACCELERATOR,))
    assert [r.records for r in report.results] == [1]
    [message] = [m for m in queued(tmp_path / "q") if m.startswith("{")]
    [record] = json.loads(message)["UsageRecords"]
    assert (record["AssociatedRecordType"], record["AssociatedRecord"], record["Count"]) == ("job", "77", 4.0)
    assert record["AvailableDuration"] == 7200 and record["Model"] == "A100"


def test_publishing_a_month_again_after_later_usage_changes_only_that_month(
    session: Session, tmp_path: Path
) -> None:
    from datetime import timedelta

    from accounting.period import Month

    october = [job(1), vm(2), vm(1, record_key="UKI-TEST:vm:i-0001:2026-10", end_time=None, status="started")]
    assert import_records(session, october, now=NOW).problems == []
    first = publish_month(session, OCTOBER, tmp_path / "q", now=NOW)
    assert {r.kind: r.records for r in first.results}[Kind.CLOUD] == 2
    # November's usage arrives, including the November part of a VM that ran across the month end
    later = [vm(1, record_key="UKI-TEST:vm:i-0001:2026-11", start_time=OCTOBER.end,
                end_time=OCTOBER.end + timedelta(hours=5), wall_seconds=5 * 3600, cpu_seconds=3600),
             job(3, end_time=OCTOBER.end + timedelta(days=2))]  # fmt: skip
    assert import_records(session, later, now=NOW + timedelta(days=40)).problems == []
    again = publish_month(session, OCTOBER, tmp_path / "q", now=NOW + timedelta(days=40))
    assert [r.changed for r in again.results] == [False] * len(again.results)
    assert [r.sha256 for r in again.results] == [r.sha256 for r in first.results]
    november = publish_month(session, Month(2026, 11), tmp_path / "q", now=NOW + timedelta(days=40))
    assert {r.kind: r.records for r in november.results}[Kind.CLOUD] == 1

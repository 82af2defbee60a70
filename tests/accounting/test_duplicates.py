"""Duplicates are found and reported with both sources, never silently counted twice or overwritten."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

from accounting.duplicates import CONFLICT, SAME_JOB, conflicts, same_job_other_key
from accounting.period import Month
from accounting.publish import publish_month
from accounting.usage import import_records, load_records
from provisioner.domain import UsageRecord
from tests.accounting.conftest import OCT, job, vm

NOW = OCT + timedelta(days=40)


def test_the_same_job_under_another_key_is_reported_with_both_sources() -> None:
    first = job(1, infrastructure="APEL-ce01-slurm")
    again = replace(first, record_key="UKI-TEST:job:sacct-1001", infrastructure="slurm", submit_host="ce02")
    other = job(2)  # another job id: not a duplicate
    [dup] = same_job_other_key([first, again, other])
    assert dup.problem == SAME_JOB and {dup.first_key, dup.second_key} == {first.record_key, again.record_key}
    assert "from slurm via ce02" in str(dup) and "from APEL-ce01-slurm via ce01.example.org" in str(dup)


def test_monthly_parts_of_one_unit_are_not_duplicates() -> None:
    october = vm(1, record_key="UKI-TEST:vm:i-0001:2026-10", end_time=None, status="started")
    november = vm(1, record_key="UKI-TEST:vm:i-0001:2026-11", start_time=OCT + timedelta(days=31),
                  end_time=OCT + timedelta(days=31, hours=2), wall_seconds=7200)  # fmt: skip
    october = replace(october, start_time=OCT + timedelta(days=30), end_time=OCT + timedelta(days=31))
    assert same_job_other_key([october, november]) == []


def test_a_conflicting_record_under_a_finished_key_is_refused_and_both_reported(session: Session) -> None:
    assert import_records(session, [job(1)], now=NOW).problems == []
    changed = replace(job(1), wall_seconds=3600, cpu_seconds=3000, infrastructure="other-ce")
    result = import_records(session, [changed, job(2)], now=NOW)
    [problem] = result.problems
    assert problem.record_key == "UKI-TEST:job:1" and CONFLICT in problem.problem
    assert "differs in wall_seconds, cpu_seconds" in problem.problem and "from other-ce" in problem.problem
    [kept] = load_records(session, ["UKI-TEST:job:1"])
    assert kept.wall_seconds == 7200  # the first stays
    assert result.imported == 1
    assert import_records(session, [job(1)], now=NOW).problems == []  # the same record again: fine


def test_a_running_record_may_be_updated_as_the_unit_runs() -> None:
    running = vm(3, end_time=None, status="started")
    later = replace(running, end_time=running.start_time + timedelta(hours=12), wall_seconds=43200,
                    status="completed")  # fmt: skip
    ok, bad = conflicts({running.record_key: running}, [later])
    assert ok == [later] and bad == []


def test_publish_reports_the_same_job_stored_twice(session: Session, tmp_path: Path) -> None:
    first = job(5)
    again = replace(first, record_key="UKI-TEST:job:other-5", submit_host="ce02")
    import_records(session, [first, again], now=NOW)
    report = publish_month(session, Month(2026, 10), tmp_path / "q", now=NOW)
    assert [(d.first_key, d.second_key) for d in report.duplicates] == [
        ("UKI-TEST:job:5", "UKI-TEST:job:other-5")
    ]


def test_a_duplicated_job_and_vm_are_sent_once_in_every_apel_message(
    session: Session, tmp_path: Path
) -> None:
    import re

    from accounting.dirq_queue import OutgoingQueue
    from accounting.publish import Kind

    first, other = job(5), job(6)
    again = replace(first, record_key="UKI-TEST:job:other-5", submit_host="ce02", infrastructure="slurm")
    machine = vm(1)
    machine_again = replace(machine, record_key="UKI-TEST:vm:i-0001-copy")
    import_records(session, [first, again, other, machine, machine_again], now=NOW)
    kinds = (Kind.SUMMARY, Kind.SYNC, Kind.JOBS, Kind.CLOUD, Kind.CLOUD_SUMMARY)
    report = publish_month(session, Month(2026, 10), tmp_path / "q", kinds=kinds, now=NOW)
    assert {(d.first_key, d.second_key) for d in report.duplicates} == {
        ("UKI-TEST:job:5", "UKI-TEST:job:other-5"),
        ("UKI-TEST:vm:i-0001", "UKI-TEST:vm:i-0001-copy"),
    }  # both sources still reported
    sent = {k: "".join(t for _, t in OutgoingQueue(tmp_path / "q").messages() if t.startswith(h))
            for k, h in (("summary", "APEL-summary-job-message"), ("sync", "APEL-sync-message"),
                         ("jobs", "APEL-individual-job-message"), ("cloud", "APEL-cloud-message"),
                         ("cloud_summary", "APEL-cloud-summary-message"))}  # fmt: skip
    jobs = lambda text: sum(int(n) for n in re.findall(r"^NumberOfJobs: (\d+)$", text, flags=re.M))  # noqa: E731
    assert jobs(sent["summary"]) == 2 and jobs(sent["sync"]) == 2  # job 5 once, job 6
    assert "ce02" not in sent["summary"] + sent["sync"] + sent["jobs"]
    assert re.findall(r"^LocalJobId: (\S+)$", sent["jobs"], flags=re.M) == ["1005", "1006"]
    assert sent["cloud"].count("VMUUID:") == 1
    assert re.findall(r"^NumberOfVMs: (\d+)$", sent["cloud_summary"], flags=re.M) == ["1"]


def _usage_file(path: Path, records: list[UsageRecord]) -> Path:
    import json
    from dataclasses import asdict

    lines = []
    for r in records:
        values = {k: v for k, v in asdict(r).items() if v is not None}
        for name in ("start_time", "end_time"):
            if name in values:
                values[name] = values[name].isoformat().replace("+00:00", "Z")
        lines.append(json.dumps(values))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_same_job_under_two_keys_in_the_usage_store_is_reported_and_sent_once(
    session: Session, tmp_path: Path
) -> None:
    import re

    from accounting.dirq_queue import OutgoingQueue
    from accounting.publish import Kind
    from accounting.usage_file import import_usage_file
    from accounting.usage_store import UsageStore

    store = UsageStore(tmp_path / "usage")
    first = job(5, infrastructure="APEL-ce01-slurm")
    again = replace(first, record_key="UKI-TEST:job:sacct-5", infrastructure="slurm", submit_host="ce02")
    # one copy per imported file (the later import is where the second comes from), and job 6 once
    import_usage_file(session, store, _usage_file(tmp_path / "a.jsonl", [first, job(6)]), now=NOW)
    import_usage_file(session, store, _usage_file(tmp_path / "b.jsonl", [again]), now=NOW)
    # the same job id at another site is another job; a job the database holds under a third key
    import_usage_file(
        session,
        store,
        _usage_file(tmp_path / "c.jsonl", [replace(job(7), site="UKI-OTHER", record_key="UKI-OTHER:job:7")]),
        now=NOW,
    )
    import_records(session, [replace(job(7), record_key="UKI-TEST:job:db-7", submit_host="broker")], now=NOW)
    import_usage_file(session, store, _usage_file(tmp_path / "d.jsonl", [job(7)]), now=NOW)
    kinds = (Kind.SUMMARY, Kind.SYNC, Kind.JOBS)
    report = publish_month(session, Month(2026, 10), tmp_path / "q", kinds=kinds, now=NOW, store=store)
    pairs = {(d.first_key, d.second_key): str(d) for d in report.duplicates}
    assert set(pairs) == {("UKI-TEST:job:5", "UKI-TEST:job:sacct-5"), ("UKI-TEST:job:7", "UKI-TEST:job:db-7")}
    five = pairs[("UKI-TEST:job:5", "UKI-TEST:job:sacct-5")]
    assert (
        SAME_JOB in five
        and "from APEL-ce01-slurm via ce01.example.org" in five
        and "from slurm via ce02" in five
    )
    sent = {k: "".join(t for _, t in OutgoingQueue(tmp_path / "q").messages() if t.startswith(h))
            for k, h in (("summary", "APEL-summary-job-message"), ("sync", "APEL-sync-message"),
                         ("jobs", "APEL-individual-job-message"))}  # fmt: skip
    jobs = lambda text: sum(int(n) for n in re.findall(r"^NumberOfJobs: (\d+)$", text, flags=re.M))  # noqa: E731
    assert jobs(sent["summary"]) == 4 and jobs(sent["sync"]) == 4  # jobs 5, 6 and 7 once each, 7 at UKI-OTHER
    assert "ce02" not in sent["summary"] + sent["sync"] + sent["jobs"]
    assert "broker" not in sent["summary"] + sent["sync"] + sent["jobs"]
    assert sorted(re.findall(r"^LocalJobId: (\S+)$", sent["jobs"], flags=re.M)) == [
        "1005",
        "1006",
        "1007",
        "1007",
    ]

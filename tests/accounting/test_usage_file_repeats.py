"""A key repeated inside one usage file follows the rule across imports: a later record that differs
from the key's first finished record (in a field accounting relies on) is refused naming both lines,
and the first finished one is kept; other repeats are superseded by the last one, as in an upsert."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlmodel import Session

from accounting import apel
from accounting.duplicates import COMPARED, CONFLICT, FINAL_STATUSES
from accounting.publish import Kind, build_messages
from accounting.usage import USAGE, import_records, load_records
from accounting.usage_file import import_usage_file
from accounting.usage_store import COLUMNS, UsageStore
from provisioner.db import make_engine, upgrade
from provisioner.domain import UsageRecord
from tests.accounting.conftest import job, vm
from tests.accounting.test_usage_file import NOW, OCTOBER, _json, _write
from tests.cli_process import isolated_env, run_cli


def _csv(path: Path, records: list[UsageRecord]) -> Path:
    """A CSV usage file with a header (record n is on line n + 1); None is an empty field."""

    def text(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            return value.isoformat().replace("+00:00", "Z")
        return str(value)

    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(COLUMNS)
        for r in records:
            values = asdict(r)
            out.writerow([text(values[c]) for c in COLUMNS])
    return path


def _sent_jobs(session: Session, store: UsageStore) -> list[str]:
    return build_messages(session, OCTOBER, Kind.JOBS, store=store)[1]


def test_a_conflicting_repeat_in_a_json_lines_file_is_refused_naming_both_lines_and_the_first_is_kept(
    session: Session, tmp_path: Path
) -> None:
    changed = replace(
        job(1), wall_seconds=3600, cpu_seconds=3000, infrastructure="other-ce", submit_host="ce09"
    )
    corrected = replace(job(2), wall_seconds=7000)
    lines = [
        _json(job(1)),
        "",  # blank: record numbers are no longer line numbers
        _json(job(2, status="failed")),  # not final: a later record may still correct it
        _json(changed),
        _json(corrected),
    ]
    store = UsageStore(tmp_path / "usage")
    result = import_usage_file(session, store, _write(tmp_path / "u.jsonl", lines), now=NOW)
    assert (result.read, result.stored, result.refused, result.repeated) == (4, 2, 1, 1)
    [problem] = result.problems
    text = str(problem)
    assert (problem.at, problem.record_key, problem.field) == ("line 4", "UKI-TEST:job:1", "record_key")
    assert CONFLICT in text and "differs in wall_seconds, cpu_seconds" in text
    assert "line 1: UKI-TEST:job:1 [from APEL-ce01-slurm via ce01.example.org" in text
    assert "line 4: UKI-TEST:job:1 [from other-ce via ce09" in text
    assert sorted(store.job_records(OCTOBER), key=lambda r: r.record_key) == [job(1), corrected]
    assert _sent_jobs(session, store) == apel.job_messages([job(1), corrected])


def test_a_conflicting_repeat_in_a_csv_file_is_refused_for_jobs_and_vms_alike(
    session: Session, tmp_path: Path
) -> None:
    records = [
        job(1),  # line 2
        vm(1),  # line 3
        replace(job(1), cores=4, cpu_seconds=20000),  # line 4: conflicts with line 2
        replace(vm(1), wall_seconds=30000, cpu_seconds=30000),  # line 5: conflicts with line 3
        job(2),  # line 6
    ]
    store = UsageStore(tmp_path / "usage")
    result = import_usage_file(session, store, _csv(tmp_path / "u.csv", records), now=NOW)
    assert (result.read, result.stored, result.vms, result.refused, result.repeated) == (5, 2, 1, 2, 0)
    by_line = {p.at: str(p) for p in result.problems}
    assert set(by_line) == {"line 4", "line 5"}
    assert "differs in cpu_seconds, cores" in by_line["line 4"]
    assert "line 2: UKI-TEST:job:1" in by_line["line 4"] and "line 4: UKI-TEST:job:1" in by_line["line 4"]
    assert "differs in wall_seconds, cpu_seconds" in by_line["line 5"]
    assert (
        "line 3: UKI-TEST:vm:i-0001" in by_line["line 5"]
        and "line 5: UKI-TEST:vm:i-0001" in by_line["line 5"]
    )
    assert sorted(store.job_records(OCTOBER), key=lambda r: r.record_key) == [job(1), job(2)]
    assert load_records(session, [vm(1).record_key]) == [vm(1)]
    assert _sent_jobs(session, store) == apel.job_messages([job(1), job(2)])
    assert build_messages(session, OCTOBER, Kind.CLOUD, store=store)[1] == apel.cloud_messages([vm(1)])


def test_repeats_that_do_not_conflict_are_superseded_by_the_last_one(
    session: Session, tmp_path: Path
) -> None:
    last = [
        job(1, fqan="/atlas/Role=pilot"),  # same figures as the finished one: only other details
        replace(job(2), wall_seconds=7000),  # the earlier one was not final
        job(3, status="failed"),  # same figures, no longer final: still no conflict
    ]
    lines = [_json(job(1)), _json(job(2, status="running")), _json(job(3)), *[_json(r) for r in last]]
    store = UsageStore(tmp_path / "usage")
    result = import_usage_file(session, store, _write(tmp_path / "u.jsonl", lines), now=NOW)
    assert (result.stored, result.refused, result.repeated, result.problems) == (3, 0, 3, [])
    assert sorted(store.job_records(OCTOBER), key=lambda r: r.record_key) == last


def test_a_record_without_a_status_is_a_completed_one_within_a_file_and_across_imports(
    session: Session, tmp_path: Path
) -> None:
    def without_status(record: UsageRecord, **over: Any) -> str:
        return json.dumps({k: v for k, v in json.loads(_json(record, **over)).items() if k != "status"})

    store = UsageStore(tmp_path / "usage")
    lines = [without_status(job(1)), without_status(job(1), local_job_id="other")]
    result = import_usage_file(session, store, _write(tmp_path / "a.jsonl", lines), now=NOW)
    assert (result.stored, result.refused) == (1, 1)
    assert "differs in local_job_id" in str(result.problems[0])
    assert [r.status for r in store.job_records(OCTOBER)] == ["completed"]
    later = import_usage_file(session, store, _write(tmp_path / "b.jsonl", lines[1:]), now=NOW)
    assert (later.stored, later.refused) == (0, 1)  # the stored one is finished: kept
    assert store.job_records(OCTOBER) == [job(1)]


def test_import_records_refuses_a_conflicting_repeat_within_one_call(session: Session) -> None:
    changed = replace(job(1), wall_seconds=3600, cpu_seconds=3000)
    result = import_records(session, [job(1), job(2, status="failed"), changed, job(2)], now=NOW)
    assert result.imported == 2
    [problem] = result.problems
    assert problem.record_key == "UKI-TEST:job:1" and CONFLICT in str(problem)
    assert "record 1: UKI-TEST:job:1" in str(problem) and "record 3: UKI-TEST:job:1" in str(problem)
    assert load_records(session, ["UKI-TEST:job:1", "UKI-TEST:job:2"]) == [job(1), job(2)]


# ---- the rule against a sequential model ------------------------------------------------------

Occurrence = tuple[int, bool, int]  # (key 0-2, final, figures 0-1); keys 0 and 1 are jobs, key 2 a VM


def _occurrence(i: int, key: int, final: bool, figures: int) -> UsageRecord:
    """Occurrence `i` (its global_user_name says which one was stored): same key, figures chosen of two."""
    if key < 2:
        record = job(key, wall_seconds=(7200, 7000)[figures], cpu_seconds=(50000, 40000)[figures])
        status = "completed" if final else "failed"
        return replace(record, status=status, global_user_name=f"occ{i}")
    record = vm(0, wall_seconds=(36000, 30000)[figures], cpu_seconds=(100000, 90000)[figures])
    record = replace(record, global_user_name=f"occ{i}")
    # an unfinished VM is a running one: no end time yet (differs from any finished one)
    return record if final else replace(record, status="started", end_time=None)


def _model(records: list[UsageRecord]) -> tuple[dict[str, str], set[int]]:
    """The rule, one record after the other: (key → global_user_name of the record kept, refused indexes)."""
    kept: dict[str, str] = {}
    first_final: dict[str, UsageRecord] = {}
    refused: set[int] = set()
    for i, r in enumerate(records):
        final = first_final.get(r.record_key)
        if final is not None and any(getattr(final, c) != getattr(r, c) for c in COMPARED):
            refused.add(i)
            continue
        if final is None and r.end_time is not None and r.status in FINAL_STATUSES:
            first_final[r.record_key] = r
        kept[r.record_key] = r.global_user_name or ""
    return kept, refused


occurrences = st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.integers(0, 1)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated database for every example (emptied by each): migrating takes about a second."""
    url = f"sqlite:///{tmp_path_factory.mktemp('repeats') / 'db.sqlite'}"
    upgrade(url)
    return url


def _empty_session(url: str) -> Session:
    session = Session(make_engine(url), expire_on_commit=False)
    session.execute(delete(USAGE))
    session.commit()
    return session


@settings(max_examples=40, deadline=None)
@given(seq=occurrences)
def test_what_a_file_stores_follows_the_rule_one_record_after_the_other(
    seq: list[Occurrence], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    records = [_occurrence(i, *o) for i, o in enumerate(seq)]
    kept, refused = _model(records)
    tmp = tmp_path_factory.mktemp("file")
    store = UsageStore(tmp / "usage")
    with _empty_session(database_url) as session:
        result = import_usage_file(
            session, store, _write(tmp / "u.jsonl", [_json(r) for r in records]), now=NOW
        )
        vms = load_records(session, [vm(0).record_key])
    got = {r.record_key: r.global_user_name for r in [*store.job_records(OCTOBER), *vms]}
    assert got == kept
    assert {p.at for p in result.problems} == {f"line {i + 1}" for i in refused}
    assert (result.refused, result.repeated) == (len(refused), len(records) - len(refused) - len(kept))


@settings(max_examples=40, deadline=None)
@given(seq=occurrences)
def test_what_import_records_stores_follows_the_same_rule(seq: list[Occurrence], database_url: str) -> None:
    records = [_occurrence(i, *o) for i, o in enumerate(seq)]
    kept, refused = _model(records)
    with _empty_session(database_url) as session:
        result = import_records(session, records, now=NOW)
        stored = load_records(session, sorted({r.record_key for r in records}))
    assert {r.record_key: r.global_user_name for r in stored} == kept
    assert len(result.problems) == len(refused)


# ---- the command ------------------------------------------------------------------------------


def test_the_import_command_exits_1_naming_both_lines_of_a_conflicting_repeat(tmp_path: Path) -> None:
    changed = replace(job(1), wall_seconds=3600, cpu_seconds=3000)
    usage = _write(tmp_path / "u.jsonl", [_json(job(1)), _json(job(2)), _json(changed)])
    done = run_cli(["accounting", "import", str(usage)], isolated_env(tmp_path / "state"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    err = " ".join(done.stderr.split())  # whatever the console wrapped
    assert "Traceback" not in err
    assert "not imported line 3 UKI-TEST:job:1" in err and CONFLICT in err
    assert "line 1: UKI-TEST:job:1 [" in err and "line 3: UKI-TEST:job:1 [" in err
    assert "imported 2 usage records of 3" in " ".join(done.stdout.split())

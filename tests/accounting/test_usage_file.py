"""`accounting import` of usage files: the columnar store groups like the database, and refuses like it."""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlmodel import Session

from accounting import summaries
from accounting.duplicates import CONFLICT
from accounting.period import Month
from accounting.publish import Kind, build_messages
from accounting.usage import USAGE, import_records, load_records, validate_record
from accounting.usage_file import import_usage_file
from accounting.usage_store import UsageStore
from provisioner.domain import UsageRecord
from tests.accounting.conftest import OCT, job, vm

NOW = datetime(2026, 11, 23, tzinfo=UTC)
OCTOBER = Month(2026, 10)


def _json(record: UsageRecord, **over: Any) -> str:
    values = {k: v for k, v in asdict(record).items() if v is not None}
    for name in ("start_time", "end_time"):
        if name in values:
            values[name] = values[name].isoformat().replace("+00:00", "Z")
    return json.dumps(values | over)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _varied_jobs(n: int) -> list[UsageRecord]:
    return [
        job(
            i,
            cores=1 + i % 3,
            cpu_seconds=7000 * (1 + i % 3),
            hs23_per_core=(12.5, 16.3)[i % 2],
            fqan=None if i % 5 == 0 else "/atlas/Role=production",
            submit_host=f"ce0{i % 2}.example.org",
        )
        for i in range(n)
    ]


def test_imported_file_groups_like_the_database_for_apel(session: Session, tmp_path: Path) -> None:
    records = _varied_jobs(300)
    september = job(999, end_time=OCT - timedelta(hours=1), start_time=OCT - timedelta(hours=3))
    records.append(september)
    store = UsageStore(tmp_path / "usage")
    result = import_usage_file(
        session, store, _write(tmp_path / "u.jsonl", [_json(r) for r in records]), now=NOW
    )
    assert (result.read, result.stored, result.refused) == (301, 301, 0)
    assert [m.month for m in store.months()] == [9, 10]
    from_store = sorted(store.job_groups(OCTOBER), key=repr)
    import_records(session, records, now=NOW)
    from_db = sorted(summaries.job_groups(session, OCTOBER), key=repr)
    assert from_store == from_db
    assert sum(g.jobs for g in from_store) == 300
    assert store.sync_counts(OCTOBER) == summaries.sync_counts(session, OCTOBER)


def test_each_bad_record_is_refused_naming_its_record_and_column(session: Session, tmp_path: Path) -> None:
    good = job(1)
    lines = [
        _json(good),
        _json(job(2), cores="eight"),
        _json(job(3), start_time="2026-10-10T08:00:00"),  # no timezone
        _json(job(4), end_time=None),
        _json(job(5), kind="container"),
        _json(job(6), hs23_per_core=250.0),
        _json(job(7), wall_seconds=-5),
        _json(job(8), cpu_seconds=7200 * 8 * 2),
        json.dumps({k: v for k, v in json.loads(_json(job(9))).items() if k != "site"}),
        _json(job(10), gpu_count=2),
    ]
    store = UsageStore(tmp_path / "usage")
    result = import_usage_file(session, store, _write(tmp_path / "u.jsonl", lines), now=NOW)
    assert (result.read, result.stored, result.refused) == (10, 1, 9)
    found = {(p.at, p.record_key, p.field) for p in result.problems}
    assert found == {
        ("line 2", "UKI-TEST:job:2", "cores"),
        ("line 3", "UKI-TEST:job:3", "start_time"),
        ("line 4", "UKI-TEST:job:4", "end_time"),
        ("line 5", "UKI-TEST:job:5", "kind"),
        ("line 6", "UKI-TEST:job:6", "hs23_per_core"),
        ("line 7", "UKI-TEST:job:7", "wall_seconds"),
        ("line 8", "UKI-TEST:job:8", "cpu_seconds"),
        ("line 9", "UKI-TEST:job:9", "site"),
        ("line 10", "UKI-TEST:job:10", "gpu_model"),
    }
    by_line = {p.at: str(p) for p in result.problems}
    assert by_line["line 2"] == "line 2 UKI-TEST:job:2 (resource r-2): cores: not an integer: eight"
    assert "has no timezone" in by_line["line 3"]
    assert store.count() == 1


def test_a_job_without_cpu_time_is_stored_as_unknown_and_adds_no_cpu(
    session: Session, tmp_path: Path
) -> None:
    store = UsageStore(tmp_path / "usage")
    lines = [_json(job(1), cpu_seconds=None), _json(job(2))]
    result = import_usage_file(session, store, _write(tmp_path / "u.jsonl", lines), now=NOW)
    assert (result.stored, result.refused) == (2, 0)
    assert sorted((r.record_key, r.cpu_seconds) for r in store.job_records(OCTOBER)) == [
        ("UKI-TEST:job:1", None),
        ("UKI-TEST:job:2", job(2).cpu_seconds),
    ]
    assert sum(g.cpu_seconds for g in store.job_groups(OCTOBER)) == job(2).cpu_seconds


def test_importing_the_same_file_twice_changes_nothing(session: Session, tmp_path: Path) -> None:
    store = UsageStore(tmp_path / "usage")
    path = _write(tmp_path / "u.jsonl", [_json(r) for r in _varied_jobs(50)])
    first = import_usage_file(session, store, path, now=NOW)
    groups = sorted(store.job_groups(OCTOBER), key=repr)
    second = import_usage_file(session, store, path, now=NOW)
    assert (first.replaced, second.replaced, second.stored) == (0, 50, 50)
    assert store.count() == 50
    assert sorted(store.job_groups(OCTOBER), key=repr) == groups


def test_a_later_record_with_the_same_key_replaces_an_unfinished_one_even_in_another_month(
    session: Session, tmp_path: Path
) -> None:
    store = UsageStore(tmp_path / "usage")
    early = job(1, status="failed")  # not final: the source may still correct it
    import_usage_file(session, store, _write(tmp_path / "a.jsonl", [_json(early), _json(job(2))]), now=NOW)
    moved = replace(
        early, end_time=datetime(2026, 11, 2, tzinfo=UTC), start_time=datetime(2026, 11, 1, 22, tzinfo=UTC)
    )
    again = import_usage_file(session, store, _write(tmp_path / "b.jsonl", [_json(moved)]), now=NOW)
    assert (again.replaced, again.refused) == (1, 0)
    assert sum(g.jobs for g in store.job_groups(OCTOBER)) == 1
    assert sum(g.jobs for g in store.job_groups(Month(2026, 11))) == 1
    # within one file the last record of a key wins, as in a database upsert, when the earlier one is
    # not final (a conflicting repeat of a finished one: tests/accounting/test_usage_file_repeats.py)
    twice = [_json(job(3, status="failed"), wall_seconds=7100), _json(job(3), wall_seconds=7000)]
    result = import_usage_file(session, store, _write(tmp_path / "c.jsonl", twice), now=NOW)
    assert (result.stored, result.repeated) == (1, 1)
    assert [r.wall_seconds for r in store.job_records(OCTOBER) if r.record_key == "UKI-TEST:job:3"] == [7000]


def test_a_conflicting_record_under_a_finished_key_in_the_store_is_refused_naming_both_sources(
    session: Session, tmp_path: Path
) -> None:
    store = UsageStore(tmp_path / "usage")
    first = import_usage_file(
        session, store, _write(tmp_path / "a.jsonl", [_json(job(1)), _json(job(2))]), now=NOW
    )
    assert (first.stored, first.refused) == (2, 0)
    changed = replace(
        job(1), wall_seconds=3600, cpu_seconds=3000, infrastructure="other-ce", submit_host="ce09"
    )
    moved = replace(
        job(2), end_time=datetime(2026, 11, 2, tzinfo=UTC), start_time=datetime(2026, 11, 1, 22, tzinfo=UTC)
    )
    lines = [_json(job(3)), _json(changed), _json(moved)]
    result = import_usage_file(session, store, _write(tmp_path / "b.jsonl", lines), now=NOW)
    assert (result.stored, result.refused, result.replaced) == (1, 2, 0)
    by_line = {p.at: p for p in result.problems}
    assert set(by_line) == {"line 2", "line 3"}
    two = str(by_line["line 2"])
    assert by_line["line 2"].record_key == "UKI-TEST:job:1" and CONFLICT in two
    assert "differs in wall_seconds, cpu_seconds" in two
    assert (
        "from APEL-ce01-slurm via ce01.example.org" in two and "from other-ce via ce09" in two
    )  # both sources
    assert "differs in start_time, end_time" in str(by_line["line 3"])
    # the finished records stay as they were, in their month; nothing of the refused ones is stored
    assert sorted((r.record_key, r.wall_seconds) for r in store.job_records(OCTOBER)) == [
        ("UKI-TEST:job:1", 7200),
        ("UKI-TEST:job:2", 7200),
        ("UKI-TEST:job:3", 7200),
    ]
    assert store.job_records(Month(2026, 11)) == []
    assert store.files(Month(2026, 11)) == []  # no empty file for a month whose records were all held back
    # the same finished record again is no conflict: it replaces its stored copy (idempotent)
    same = import_usage_file(session, store, _write(tmp_path / "c.jsonl", [_json(job(1))]), now=NOW)
    assert (same.stored, same.refused, same.replaced) == (1, 0, 1)
    assert store.count() == 3


def test_a_file_record_conflicting_with_a_finished_database_record_is_refused_and_the_database_keeps_it(
    session: Session, tmp_path: Path
) -> None:
    import_records(session, [job(7, infrastructure="broker")], now=NOW)
    store = UsageStore(tmp_path / "usage")
    changed = replace(job(7), cores=1, cpu_seconds=7000, infrastructure="sacct")
    result = import_usage_file(session, store, _write(tmp_path / "u.jsonl", [_json(changed)]), now=NOW)
    assert (result.stored, result.refused) == (0, 1)
    [problem] = result.problems
    assert problem.at == "line 1" and "from broker via" in str(problem) and "from sacct via" in str(problem)
    assert [r.cores for r in load_records(session, ["UKI-TEST:job:7"])] == [8]
    assert store.count() == 0


def test_vm_records_of_a_file_go_to_the_database_and_jobs_replace_the_database_copy(
    session: Session, tmp_path: Path
) -> None:
    # an earlier record in the database, of a job still running then (not final: it may be replaced)
    import_records(session, [job(5, wall_seconds=60, cpu_seconds=60, status="running")], now=NOW)
    store = UsageStore(tmp_path / "usage")
    lines = [_json(vm(1)), _json(job(5))]
    result = import_usage_file(session, store, _write(tmp_path / "u.jsonl", lines), now=NOW)
    assert (result.vms, result.stored, result.replaced) == (1, 1, 1)
    kinds = dict(session.execute(select(USAGE.c.kind, func.count()).group_by(USAGE.c.kind)).all())
    assert kinds == {"vm": 1}
    assert [r.wall_seconds for r in store.job_records(OCTOBER)] == [7200]


def test_published_summaries_count_database_and_imported_jobs_once_each(
    session: Session, tmp_path: Path
) -> None:
    import_records(session, [job(n, submit_host="broker") for n in range(100, 110)], now=NOW)
    store = UsageStore(tmp_path / "usage")
    import_usage_file(
        session, store, _write(tmp_path / "u.jsonl", [_json(r) for r in _varied_jobs(40)]), now=NOW
    )
    _, messages = build_messages(session, OCTOBER, Kind.SUMMARY, store=store)
    text = "".join(messages)
    assert (
        sum(int(line.split(": ")[1]) for line in text.splitlines() if line.startswith("NumberOfJobs")) == 50
    )
    _, syncs = build_messages(session, OCTOBER, Kind.SYNC, store=store)
    counts = [
        int(line.split(": ")[1]) for line in "".join(syncs).splitlines() if line.startswith("NumberOfJobs")
    ]
    assert sorted(counts) == [10, 20, 20]
    assert (
        build_messages(session, OCTOBER, Kind.SUMMARY)[0]
        < build_messages(session, OCTOBER, Kind.SUMMARY, store=store)[0]
    )


def _random_record(rng: random.Random, n: int) -> UsageRecord:
    start = OCT + timedelta(minutes=rng.randrange(0, 40 * 24 * 60))
    span = rng.choice([-600, 0, 3600, 7200, 86400])
    return job(
        n,
        kind=rng.choice(["job", "job", "pilot", "backfill", "other"]),
        experiment=rng.choice(["atlas", "cms", ""]),
        start_time=start,
        end_time=rng.choice([start + timedelta(seconds=span), None])
        if rng.random() < 0.2
        else start + timedelta(seconds=span),
        wall_seconds=rng.choice([-1, 0, 3600, 7200, 7400, 90000]),
        cpu_seconds=rng.choice([-1, 0, 1000, 60000, 200000, None]),
        cores=rng.choice([0, 1, 8]),
        nodes=rng.choice([0, 1, 2]),
        gpu_count=rng.choice([-1, 0, 0, 2]),
        gpu_model=rng.choice([None, "A100"]),
        hs23_per_core=rng.choice([None, 1.0, 12.5, 80.0, 81.0]),
    )


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_the_file_checks_refuse_exactly_what_record_validation_refuses(
    seed: int, tmp_path_factory: Any
) -> None:
    from provisioner.db import make_engine, upgrade

    tmp = tmp_path_factory.mktemp("refusals")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    upgrade(url)
    rng = random.Random(seed)
    records = [_random_record(rng, n) for n in range(60)]
    expected = {
        (r.record_key, p.field)
        for r in records
        for p in validate_record(r, known_vos={"atlas", "cms"}, now=NOW)
    }
    with Session(make_engine(url)) as session:
        result = import_usage_file(
            session,
            UsageStore(tmp / "usage"),
            _write(tmp / "u.jsonl", [_json(r) for r in records]),
            known_vos={"atlas", "cms"},
            now=NOW,
        )
    got = {(p.record_key, p.field) for p in result.problems}
    assert got == expected
    assert result.stored == len({r.record_key for r in records} - {k for k, _ in expected})


def _published_jobs(session: Session, store: UsageStore, month: Month) -> int:
    """NumberOfJobs summed over the month's summary messages (database and store together)."""
    _, messages = build_messages(session, month, Kind.SUMMARY, store=store)
    lines = "".join(messages).splitlines()
    return sum(int(line.split(": ")[1]) for line in lines if line.startswith("NumberOfJobs"))


def _held_keys(session: Session, store: UsageStore) -> tuple[set[str], set[str]]:
    """Record keys of job records in the store and in the database."""
    in_store = {r.record_key for m in store.months() for r in store.job_records(m)}
    in_db = {k for (k,) in session.execute(select(USAGE.c.record_key).where(USAGE.c.kind == "job"))}
    return in_store, in_db


@pytest.mark.parametrize("failing_rename", [1, 2, 3])
def test_a_crash_between_the_stores_renames_leaves_keys_missing_never_counted_twice(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_rename: int
) -> None:
    """The renames of this import: 1 the older October file without job 1, 2 the September batch,
    3 the October batch. Whichever fails (the process dies there), the database rows the file
    replaces are already gone, so no key is held twice; the same import run again restores all."""
    import accounting.usage_store as usage_store

    store = UsageStore(tmp_path / "usage")
    import_usage_file(session, store, _write(tmp_path / "a.jsonl", [_json(job(1, status="failed"))]), now=NOW)
    september = job(3, end_time=OCT - timedelta(hours=1), start_time=OCT - timedelta(hours=3))
    # the database copies the file replaces (unfinished), one in each month
    import_records(session, [job(2, status="running"), replace(september, status="running")], now=NOW)
    before = {f: f.read_bytes() for f in store.files()}
    lines = [_json(job(1)), _json(job(2)), _json(september), _json(job(4))]
    real_replace = os.replace
    calls = 0

    def crash_at(src: Any, dst: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == failing_rename:
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(usage_store.os, "replace", crash_at)
    with pytest.raises(OSError, match="killed"):
        import_usage_file(session, store, _write(tmp_path / "b.jsonl", lines), now=NOW)
    monkeypatch.undo()
    assert [p for p in store.tmp.rglob("*") if p.is_file()] == []  # nothing half-written left behind
    if failing_rename == 1:
        assert {f: f.read_bytes() for f in store.files()} == before
    in_store, in_db = _held_keys(session, store)
    assert in_store & in_db == set()  # never in both places
    assert in_db == set()  # the file's keys left the database before the first rename
    published = _published_jobs(session, store, Month(2026, 9)) + _published_jobs(session, store, OCTOBER)
    assert published == len(in_store)  # each held job counted once
    # the same import, run again, does it all
    again = import_usage_file(session, store, _write(tmp_path / "b.jsonl", lines), now=NOW)
    assert (again.stored, again.refused) == (4, 0)
    in_store, in_db = _held_keys(session, store)
    assert (in_store, in_db) == ({f"UKI-TEST:job:{n}" for n in (1, 2, 3, 4)}, set())
    stored = {r.record_key: r for m in store.months() for r in store.job_records(m)}
    assert stored == {r.record_key: r for r in (job(1), job(2), september, job(4))}
    assert _published_jobs(session, store, Month(2026, 9)) == 1
    assert _published_jobs(session, store, OCTOBER) == 3


def test_refusals_name_the_file_line_even_after_blank_lines(session: Session, tmp_path: Path) -> None:
    # well-formed JSON lines take DuckDB's JSON reader, which skips blank lines: messages still give
    # the line of the file
    text = (
        "\n".join([_json(job(1)), "", "   ", _json(job(2), cores=0), "", _json(job(3), nodes="two")]) + "\n"
    )
    path = tmp_path / "u.jsonl"
    path.write_text(text)
    result = import_usage_file(session, UsageStore(tmp_path / "usage"), path, now=NOW)
    assert (result.read, result.stored, result.refused) == (3, 1, 2)
    assert {(p.at, p.field) for p in result.problems} == {("line 4", "cores"), ("line 6", "nodes")}
    # a key that is no usage record field sends the file line by line: that record is refused by name
    extra = _write(tmp_path / "x.jsonl", [_json(job(4)), _json(job(5), colour="red")])
    result = import_usage_file(session, UsageStore(tmp_path / "usage"), extra, now=NOW)
    assert [(p.at, p.field, p.problem) for p in result.problems] == [
        ("line 2", "colour", "not a usage record field")
    ]

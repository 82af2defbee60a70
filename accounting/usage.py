"""Usage records: validation (what APEL would reject or what is plainly wrong) and idempotent import."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from accounting.benchmark import benchmark_problem
from accounting.duplicates import FINAL_STATUSES, conflicts
from provisioner.domain import UsageRecord
from provisioner.model import UsageRecordRow, row_time

USAGE: Table = UsageRecordRow.__table__  # type: ignore[attr-defined]

KINDS = frozenset({"vm", "pilot", "backfill", "job"})
# A job's CPU time may exceed wall × cores a little (kernel threads, clock granularity); beyond this
# factor plus a minute the numbers are inconsistent and the record is wrong.
CPU_OVER_WALL_FACTOR = 1.1
CPU_OVER_WALL_SLACK_S = 60
# Wall time may exceed end − start by clock skew between hosts, not more.
WALL_SLACK_S = 120
# APEL rejects EndTime more than two days in the future.
FUTURE_LIMIT = timedelta(days=2)
UPSERT_BATCH = 500


@dataclass(frozen=True, slots=True)
class UsageProblem:
    """Why one usage record cannot be accounted: it is reported, never written into a message."""

    record_key: str
    resource_id: str | None
    field: str
    problem: str
    at: str | None = None  # where in the imported file: "line 12", "record 3"

    def __str__(self) -> str:
        where = f" (resource {self.resource_id})" if self.resource_id else ""
        at = f"{self.at} " if self.at is not None else ""
        return f"{at}{self.record_key or '(no record_key)'}{where}: {self.field}: {self.problem}"


@dataclass(slots=True)
class ImportResult:
    imported: int = 0  # records written (new or updated)
    problems: list[UsageProblem] = field(default_factory=list)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def validate_record(
    record: UsageRecord, *, known_vos: Collection[str] | None = None, now: datetime | None = None
) -> list[UsageProblem]:
    """Everything wrong with one record (empty list: fit for accounting)."""
    now = now or datetime.now(UTC)
    problems: list[UsageProblem] = []

    def bad(name: str, problem: str) -> None:
        problems.append(UsageProblem(record.record_key, record.resource_id, name, problem))

    if not record.record_key:
        bad("record_key", "empty record key")
    if record.kind not in KINDS:
        bad("kind", f"unknown kind {record.kind!r} (expected one of {sorted(KINDS)})")
    if not record.experiment:
        bad("experiment", "no VO")
    elif known_vos is not None and record.experiment not in known_vos:
        bad("experiment", f"unknown VO {record.experiment!r}")
    if not record.site:
        bad("site", "no site name")
    if record.start_time.tzinfo is None:
        bad("start_time", "naive datetime (times must be UTC-aware)")
    running_vm = record.kind == "vm" and record.status == "started"
    if record.end_time is None:
        if not running_vm:
            bad("end_time", "missing end time")
    elif record.end_time.tzinfo is None:
        bad("end_time", "naive datetime (times must be UTC-aware)")
    else:
        span = (_utc(record.end_time) - _utc(record.start_time)).total_seconds()
        if span < 0:
            bad("end_time", f"end {record.end_time.isoformat()} before start {record.start_time.isoformat()}")
        elif record.wall_seconds > span + WALL_SLACK_S:
            bad("wall_seconds", f"wall {record.wall_seconds} s longer than end − start = {int(span)} s")
        if _utc(record.end_time) > now + FUTURE_LIMIT:
            bad("end_time", f"end {record.end_time.isoformat()} is in the future")
    if record.wall_seconds < 0:
        bad("wall_seconds", f"negative wall time {record.wall_seconds}")
    if record.cpu_seconds is not None and record.cpu_seconds < 0:
        bad("cpu_seconds", f"negative CPU time {record.cpu_seconds}")
    if record.cores < 1:
        bad("cores", f"cores must be ≥ 1, got {record.cores}")
    if record.nodes < 1:
        bad("nodes", f"nodes must be ≥ 1, got {record.nodes}")
    if record.cpu_seconds is not None and record.cores >= 1 and record.wall_seconds >= 0:
        limit = record.wall_seconds * record.cores * CPU_OVER_WALL_FACTOR + CPU_OVER_WALL_SLACK_S
        if record.cpu_seconds > limit:
            bad(
                "cpu_seconds",
                f"CPU {record.cpu_seconds} s exceeds wall × cores = "
                f"{record.wall_seconds * record.cores} s by more than {int((CPU_OVER_WALL_FACTOR - 1) * 100)}%",
            )
    if record.gpu_count < 0:
        bad("gpu_count", f"negative GPU count {record.gpu_count}")
    if record.gpu_count > 0 and not record.gpu_model:
        bad("gpu_model", "GPUs used but no GPU model")
    problem = benchmark_problem(record.hs23_per_core)
    if problem is not None:
        bad("hs23_per_core", problem)
    return problems


_ROW_FIELDS = [f.name for f in fields(UsageRecord) if f.name in UsageRecordRow.model_fields]


def record_to_values(record: UsageRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in _ROW_FIELDS}
    values["start_time"] = _utc(record.start_time)
    if record.end_time is not None:
        values["end_time"] = _utc(record.end_time)
    return values


def row_to_record(row: UsageRecordRow) -> UsageRecord:
    """Back from the table to the domain value (SQLite drops tzinfo: restore UTC)."""
    values = {name: getattr(row, name) for name in _ROW_FIELDS}
    values["start_time"] = row_time(row.start_time)
    values["end_time"] = row_time(row.end_time)
    return UsageRecord(**values)


def import_records(
    session: Session,
    records: Iterable[UsageRecord],
    *,
    known_vos: Collection[str] | None = None,
    now: datetime | None = None,
) -> ImportResult:
    """Validate and upsert by `record_key`; importing the same usage twice changes nothing.

    Records with problems are not stored (so they can never reach a message) and are returned in
    `problems`, each naming the record, its resource and the field at fault. A record whose key
    holds a finished record with other figures is refused too, the problem naming both sources
    (`accounting.duplicates.conflicts`). Within `records` the same holds: a record whose key came
    earlier as a finished record with other figures is refused (that first one is kept); of the
    other repeats of a key the last one wins.
    """
    result = ImportResult()
    valid: dict[str, UsageRecord] = {}
    first_final: dict[str, tuple[int, UsageRecord]] = {}  # key → (position, its first final record)
    for no, record in enumerate(records, start=1):
        problems = validate_record(record, known_vos=known_vos, now=now)
        if problems:
            result.problems.extend(problems)
            continue
        key = record.record_key
        if key in first_final:
            at, final = first_final[key]
            found = conflicts({key: final}, [record])[1]
            if found:
                named = replace(
                    found[0], first=f"record {at}: {found[0].first}", second=f"record {no}: {found[0].second}"
                )
                result.problems.append(UsageProblem(key, record.resource_id, "record_key", str(named)))
                continue
        elif record.end_time is not None and record.status in FINAL_STATUSES:
            first_final[key] = (no, record)
        valid[key] = record  # of the repeats that do not conflict the last one wins
    keys = list(valid)
    stored = {r.record_key: r for i in range(0, len(keys), UPSERT_BATCH)
              for r in load_records(session, keys[i : i + UPSERT_BATCH])}  # fmt: skip
    writable, clashes = conflicts(stored, valid.values())
    for clash in clashes:  # a finished record is never overwritten with other figures: both reported
        key = clash.second_key
        result.problems.append(UsageProblem(key, valid[key].resource_id, "record_key", str(clash)))
    rows = [record_to_values(r) for r in writable]
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = USAGE
    for start in range(0, len(rows), UPSERT_BATCH):
        batch = rows[start : start + UPSERT_BATCH]
        stmt = insert(table).values(batch)
        updates = {name: stmt.excluded[name] for name in _ROW_FIELDS if name != "record_key"}
        session.execute(stmt.on_conflict_do_update(index_elements=["record_key"], set_=updates))
    session.commit()
    result.imported = len(rows)
    return result


def valid_row_condition() -> ColumnElement[bool]:
    """SQL form of the checks a stored row must pass to be published (defence in depth: rows may
    have been written by other code paths than `import_records`)."""
    t = USAGE.c
    return and_(
        t.end_time.is_not(None),
        t.wall_seconds >= 0,
        or_(t.cpu_seconds.is_(None), t.cpu_seconds >= 0),
        t.cores >= 1,
        t.nodes >= 1,
        t.hs23_per_core.is_not(None),
        t.hs23_per_core >= 3.0,
        t.hs23_per_core <= 80.0,
        or_(t.cpu_seconds.is_(None), t.cpu_seconds <= t.wall_seconds * t.cores * 1.1 + 60),
        t.end_time >= t.start_time,
    )


def stored_problems(
    session: Session, start: datetime, end: datetime, *, site: str | None = None
) -> list[UsageProblem]:
    """Stored rows ending (or, unfinished, starting) in [start, end) that fail validation."""
    t = USAGE.c
    in_period = or_(
        and_(t.end_time >= start, t.end_time < end),
        and_(t.end_time.is_(None), t.start_time >= start, t.start_time < end),
    )
    stmt = select(UsageRecordRow).where(
        in_period, ~valid_row_condition(), *([t.site == site] if site else [])
    )
    out: list[UsageProblem] = []
    for row in session.execute(stmt.order_by(t.record_key)).scalars():
        record = row_to_record(row)
        if record.kind == "vm" and record.status == "started" and record.end_time is None:
            continue  # a running VM: reported as started, not a problem
        found = validate_record(record)
        out.extend(found or [UsageProblem(row.record_key, row.resource_id, "*", "fails the publish checks")])
    return out


def load_records(session: Session, keys: Sequence[str]) -> list[UsageRecord]:
    stmt = select(UsageRecordRow).where(USAGE.c.record_key.in_(keys))
    return [row_to_record(r) for r in session.execute(stmt).scalars()]

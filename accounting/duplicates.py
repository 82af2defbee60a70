"""Duplicate usage, found and reported with both sources: the same job under two record keys, and a
record that conflicts with the finished one already stored under its key.

Both would distort accounting silently: the first counts a job twice (in the ledger, in APEL), the
second lets a later import overwrite a finished record with different figures. Pure functions over
`UsageRecord`s, so every store (the SQL table, a columnar store) can run them on what it holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from provisioner.domain import UsageRecord

__all__ = ["FINAL_STATUSES", "Duplicate", "conflicts", "describe", "same_job_other_key"]

# A record with an end time and one of these statuses is final: nothing should change it any more.
# Records of live units ("running", "started") and failed/lost ones are updated as the broker learns.
FINAL_STATUSES = frozenset({"completed", "continued"})
# Fields a finished record keeps for good (what accounting sums or keys on).
COMPARED = ("kind", "experiment", "site", "start_time", "end_time", "wall_seconds", "cpu_seconds", "cores",
            "nodes", "local_job_id", "resource_id", "hs23_per_core", "gpu_count")  # fmt: skip
UNIT_KINDS = frozenset({"vm", "pilot", "backfill"})
SAME_JOB = "the same job under two record keys"
CONFLICT = "a conflicting record under the key of a finished one"


@dataclass(frozen=True, slots=True)
class Duplicate:
    problem: str  # SAME_JOB or CONFLICT
    first_key: str  # the record kept (stored first)
    second_key: str  # the other one
    first: str  # `describe` of each: key, source, times
    second: str
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.problem}{extra}: {self.first} | {self.second}"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def describe(record: UsageRecord) -> str:
    """The record with where it came from: key, source (infrastructure or backend), submit host, times."""
    source = record.infrastructure or record.backend
    end = _utc(record.end_time)
    start = _utc(record.start_time)
    times = f"{start:%Y-%m-%d %H:%M:%S}→{'open' if end is None else f'{end:%Y-%m-%d %H:%M:%S}'}"
    return (
        f"{record.record_key} [from {source} via {record.submit_host}, {times}, wall {record.wall_seconds} s]"
    )


def _overlap(a: UsageRecord, b: UsageRecord) -> bool:
    a0, b0 = _utc(a.start_time), _utc(b.start_time)
    a1, b1 = _utc(a.end_time), _utc(b.end_time)
    assert a0 is not None and b0 is not None
    return (a1 is None or b0 < a1) and (b1 is None or a0 < b1)


def same_job_other_key(records: Iterable[UsageRecord]) -> list[Duplicate]:
    """Pairs of records with different keys that describe the same job over overlapping time: the same
    Slurm/batch job id at one site, or the same VM, pilot or backfill unit (by resource id)."""
    groups: dict[tuple[str, ...], list[UsageRecord]] = defaultdict(list)
    for r in records:
        if r.local_job_id:
            groups[("job", r.site, r.local_job_id)].append(r)
        if r.resource_id and r.kind in UNIT_KINDS:
            groups[("unit", r.site, r.resource_id)].append(r)
    found: dict[tuple[str, str], Duplicate] = {}
    for (what, _site, ident), members in groups.items():
        members.sort(key=lambda r: (_utc(r.start_time), r.record_key))
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                pair = (min(a.record_key, b.record_key), max(a.record_key, b.record_key))
                if a.record_key == b.record_key or pair in found or not _overlap(a, b):
                    continue
                label = f"job id {ident}" if what == "job" else f"resource {ident}"
                found[pair] = Duplicate(SAME_JOB, a.record_key, b.record_key, describe(a), describe(b), label)
    return [found[k] for k in sorted(found)]


def conflicts(
    stored: Mapping[str, UsageRecord], incoming: Iterable[UsageRecord]
) -> tuple[list[UsageRecord], list[Duplicate]]:
    """(records that may be written, conflicts): an incoming record conflicts when the record stored
    under its key is final and differs in a field accounting relies on. The stored one is kept."""
    ok: list[UsageRecord] = []
    bad: list[Duplicate] = []
    for record in incoming:
        old = stored.get(record.record_key)
        if old is None or old.end_time is None or old.status not in FINAL_STATUSES:
            ok.append(record)
            continue
        differ = [
            name
            for name in COMPARED
            if (_utc(v) if isinstance(v := getattr(old, name), datetime) else v)
            != (_utc(w) if isinstance(w := getattr(record, name), datetime) else w)
        ]
        if differ:
            detail = "differs in " + ", ".join(differ)
            bad.append(
                Duplicate(
                    CONFLICT, old.record_key, record.record_key, describe(old), describe(record), detail
                )
            )
        else:
            ok.append(record)
    return ok, bad

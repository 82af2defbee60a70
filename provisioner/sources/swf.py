"""Reader for the Standard Workload Format (SWF v2.2) of the Parallel Workloads Archive.

A job line has the 18 standard fields; some archives publish extended SWF with extra fields after
them (e.g. a job name or site-specific columns). Those are accepted and ignored: only the 18
standard fields are read. A line with fewer than 18 fields is an error.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SWF_FIELDS = 18  # the standard fields; extended SWF lines carry more after them


class SwfError(ValueError):
    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class SwfJob:
    """One job of a trace; times in seconds from the trace's start, -1 fields mapped to None."""

    job_number: int
    submit_s: int
    wait_s: int | None
    run_s: int
    processors: int
    requested_time_s: int | None
    requested_memory_kb_per_proc: int | None
    status: int
    user_id: int | None
    group_id: int | None
    queue: int | None
    partition: int | None


_NAMES = {0: "job number", 1: "submit time", 2: "wait time", 3: "run time", 4: "allocated processors",
          7: "requested processors", 8: "requested time", 9: "requested memory", 10: "status",
          11: "user id", 12: "group id", 14: "queue", 15: "partition"}  # fmt: skip
_MAX = 10**15  # far beyond any trace (3e7 years in seconds): a bigger number is a broken line


class _BadField(ValueError):
    pass


def _int(fields: list[str], index: int) -> int:
    """Field `index` as an integer (SWF writes some as "12.0"); a non-finite or absurd value is an error."""
    text = fields[index]
    try:
        number = float(text)
    except ValueError:
        raise _BadField(f"{_NAMES[index]} (field {index + 1}): {text!r} is not a number") from None
    if number != number or abs(number) > _MAX:  # NaN, inf or beyond any real trace
        raise _BadField(f"{_NAMES[index]} (field {index + 1}): {text!r} is not a finite number of the trace")
    return int(number)


def _opt(fields: list[str], index: int) -> int | None:
    number = _int(fields, index)
    return None if number < 0 else number


def read_swf(path: Path, *, limit: int | None = None) -> Iterator[SwfJob]:
    """Yield jobs with a known run time and processor count; header lines (`;`) are skipped.

    A path ending in `.gz` is read through gzip (the archive publishes traces compressed)."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as handle:
        count = 0
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith(";"):
                continue
            fields = line.split()
            if len(fields) < SWF_FIELDS:
                raise SwfError(path, lineno, f"expected at least {SWF_FIELDS} fields, found {len(fields)}")
            try:
                run_s = _int(fields, 3)
                procs = _int(fields, 4) if _int(fields, 4) > 0 else _int(fields, 7)
                job = SwfJob(
                    job_number=_int(fields, 0),
                    submit_s=_int(fields, 1),
                    wait_s=_opt(fields, 2),
                    run_s=run_s,
                    processors=procs,
                    requested_time_s=_opt(fields, 8),
                    requested_memory_kb_per_proc=_opt(fields, 9),
                    status=_int(fields, 10),
                    user_id=_opt(fields, 11),
                    group_id=_opt(fields, 12),
                    queue=_opt(fields, 14),
                    partition=_opt(fields, 15),
                )
            except _BadField as exc:
                raise SwfError(path, lineno, str(exc)) from None
            if job.run_s <= 0 or job.processors <= 0:
                continue  # cancelled before start, or unknown size: no work to provision for
            yield job
            count += 1
            if limit is not None and count >= limit:
                return

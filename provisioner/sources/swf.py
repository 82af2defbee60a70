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


def _opt(value: str) -> int | None:
    number = int(float(value))
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
                run_s = int(float(fields[3]))
                procs = int(fields[4]) if int(fields[4]) > 0 else int(fields[7])
                job = SwfJob(
                    job_number=int(fields[0]),
                    submit_s=int(fields[1]),
                    wait_s=_opt(fields[2]),
                    run_s=run_s,
                    processors=procs,
                    requested_time_s=_opt(fields[8]),
                    requested_memory_kb_per_proc=_opt(fields[9]),
                    status=int(fields[10]),
                    user_id=_opt(fields[11]),
                    group_id=_opt(fields[12]),
                    queue=_opt(fields[14]),
                    partition=_opt(fields[15]),
                )
            except ValueError as exc:
                raise SwfError(path, lineno, f"not a number: {exc}") from None
            if job.run_s <= 0 or job.processors <= 0:
                continue  # cancelled before start, or unknown size: no work to provision for
            yield job
            count += 1
            if limit is not None and count >= limit:
                return

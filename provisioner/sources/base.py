"""The interface every workload source implements, and what a source says about jobs that are not demand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from provisioner.domain import PendingJob


@dataclass(frozen=True, slots=True)
class SkippedJob:
    """A waiting job that is not demand because no new capacity would start it, and why."""

    job_id: str
    experiment: str
    partition: str
    reason: str  # the batch system's own words (Slurm: JobHeldUser, QOSMaxCpuPerUserLimit...)
    tasks: int
    cores: int


@runtime_checkable
class WorkloadSource(Protocol):
    """Something that knows which jobs are waiting right now."""

    name: str

    async def pending(self) -> list[PendingJob]:
        """Jobs waiting for capacity now. Grouping into DemandGroups is done by the engine."""
        ...


@runtime_checkable
class ReportsSkipped(Protocol):
    """A source that also tells which waiting jobs it left out (as of its last `pending()`)."""

    skipped: list[SkippedJob]


@runtime_checkable
class NoticesSubmissions(Protocol):
    """A source that can tell cheaply, between cycles, that new jobs were submitted."""

    name: str
    poll_seconds: float  # how often to ask (0: never)

    async def new_submissions(self) -> bool:
        """Whether jobs that could use capacity appeared since the last call (the first call: False)."""
        ...

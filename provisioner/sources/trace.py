"""A workload source that replays a real batch trace (SWF) on a clock: jobs become pending at their submit time.

The demo and the simulator use it; jobs leave the pending set when the simulated batch system starts them
(`take`), so the broker sees demand fall as capacity arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from provisioner.domain import Arch, PendingJob
from provisioner.sources.swf import SwfJob


@dataclass(frozen=True, slots=True)
class TraceMapping:
    """How trace jobs become this broker's jobs: experiment, shape limits, time scaling."""

    experiment: str
    archs: frozenset[Arch] = frozenset({Arch.X86_64})
    max_cores: int = 64
    memory_gb_per_core: float = 2.0
    time_scale: float = 1.0  # >1 compresses the trace's submit times
    preemptible: bool = False
    data_location: str | None = None
    input_gb_per_job: float = 0.0


class TraceSource:
    """Pending jobs from a trace, released as the clock passes their (scaled) submit time."""

    def __init__(
        self,
        name: str,
        jobs: Iterable[SwfJob],
        mapping: TraceMapping,
        *,
        start: datetime,
        now: Callable[[], datetime],
    ) -> None:
        self.name = name
        self._now = now
        self._future: deque[tuple[datetime, PendingJob]] = deque()
        self._runtime_hours: dict[str, float] = {}
        ordered = sorted(jobs, key=lambda j: j.submit_s)
        first = (
            ordered[0].submit_s if ordered else 0
        )  # replay from the first job, wherever it sits in the trace
        for job in ordered:
            submit = start + timedelta(seconds=(job.submit_s - first) / mapping.time_scale)
            cores = min(job.processors, mapping.max_cores)
            self._runtime_hours[f"{name}-{job.job_number}"] = job.run_s / 3600
            self._future.append(
                (
                    submit,
                    PendingJob(
                        job_id=f"{name}-{job.job_number}",
                        experiment=mapping.experiment,
                        cores=cores,
                        memory_gb=cores * mapping.memory_gb_per_core,
                        # Group by requested time rounded up to the hour, as schedulers bucket walltimes.
                        walltime_hours=max(1.0, round((job.requested_time_s or job.run_s) / 3600 + 0.499)),
                        archs=mapping.archs,
                        preemptible=mapping.preemptible,
                        data_location=mapping.data_location,
                        input_gb=mapping.input_gb_per_job,
                    ),
                )
            )
        self._pending: dict[str, PendingJob] = {}

    def _release_due(self) -> None:
        now = self._now()
        while self._future and self._future[0][0] <= now:
            _, job = self._future.popleft()
            self._pending[job.job_id] = job

    async def pending(self) -> list[PendingJob]:
        return self.pending_now()

    def pending_now(self) -> list[PendingJob]:
        self._release_due()
        return list(self._pending.values())

    def runtime_hours(self, job_id: str) -> float:
        """How long the job really ran in the trace (its walltime request is usually longer)."""
        return self._runtime_hours[job_id]

    def take(self, job_id: str) -> PendingJob | None:
        """The batch system started this job: it is no longer pending."""
        return self._pending.pop(job_id, None)

    def requeue(self, job: PendingJob) -> None:
        """A job lost with its node (spot interruption, preemption) is pending again."""
        self._pending[job.job_id] = replace(job)

    def stop_releasing(self) -> None:
        """No more submissions from the trace (the jobs already pending stay)."""
        self._future.clear()

    @property
    def exhausted(self) -> bool:
        return not self._future and not self._pending

"""A simulated batch system: runs pending work on the simulated backends' units as the simulated clock moves.

It plays the part the pilots' payload and the experiments' workload managers play in production:
a running unit of a demand group pulls that group's pending jobs into its free slots, marks itself
busy, and goes idle when they finish; jobs on a unit that the provider takes back go pending again.
The broker sees only what it would see for real: pending jobs shrinking, units busy or idle.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from backends.base import TAG_GROUP, ProviderState
from backends.simulated import SimulatedBackend, SimUnit
from provisioner.clock import Clock
from provisioner.domain import DemandGroup, Offering, PendingJob
from provisioner.grouping import group_jobs
from provisioner.sources.trace import TraceSource

REFERENCE_HS23_PER_CORE = 10.0  # trace run times are taken as measured on cores of this speed


@dataclass(slots=True)
class RunningJob:
    job_id: str
    group_id: str
    experiment: str
    ends_at: datetime
    cores: int
    hs23_hours: float
    pending: PendingJob | None  # None for a burst-request slot
    source: TraceSource | None

    def finished_before(self, unit: SimUnit) -> bool:
        """A job that had ended by the time its unit went away is done, not lost."""
        return unit.terminated_at is not None and self.ends_at <= unit.terminated_at


@dataclass(slots=True)
class StepReport:
    started: int = 0
    finished: int = 0
    requeued: int = 0
    hs23_hours_done: float = 0.0
    hs23_hours_by_experiment: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class BatchSimulator:
    """Pulls work onto units; `demand()` gives the request groups still to start, for the engine."""

    def __init__(
        self,
        backends: Sequence[SimulatedBackend],
        traces: Sequence[TraceSource],
        offerings: Mapping[str, Offering],
        clock: Clock,
        request_groups: Callable[[], Sequence[DemandGroup]],
    ) -> None:
        self.backends = list(backends)
        self.traces = list(traces)
        self.offerings = offerings
        self.clock = clock
        self.request_groups = request_groups
        self.slots: dict[str, list[RunningJob]] = {}
        self.request_started: dict[str, int] = defaultdict(int)
        self.request_finished: dict[str, int] = defaultdict(int)
        self._group_of_shape: dict[tuple[object, ...], str] = {}
        self.delivered_hs23_hours: dict[str, float] = defaultdict(float)

    # --- what the engine sees ----------------------------------------------------------------------

    def demand(self) -> list[DemandGroup]:
        """Open burst requests, less the slots already started (running slots are the fleet's)."""
        out = []
        for g in self.request_groups():
            left = g.jobs - self.request_started[g.id]
            if left > 0:
                out.append(replace(g, jobs=left))
        return out

    def request_done(self, group: DemandGroup) -> bool:
        return self.request_finished[group.id] >= group.jobs

    # --- the batch system --------------------------------------------------------------------------

    def _group_id(self, job: PendingJob) -> str:
        shape = (
            job.experiment,
            job.cores,
            job.memory_gb,
            job.walltime_hours,
            job.archs,
            job.gpus,
            job.gpu_model,
            job.data_location,
            job.preemptible,
            job.priority,
        )
        gid = self._group_of_shape.get(shape)
        if gid is None:
            gid = group_jobs([job])[0].id
            self._group_of_shape[shape] = gid
        return gid

    def _pending_by_group(self) -> dict[str, list[tuple[PendingJob, TraceSource]]]:
        by_group: dict[str, list[tuple[PendingJob, TraceSource]]] = defaultdict(list)
        for source in self.traces:
            for job in source.pending_now():
                by_group[self._group_id(job)].append((job, source))
        return by_group

    def _units(self) -> Iterable[tuple[SimulatedBackend, SimUnit]]:
        for backend in self.backends:
            backend.live_units()  # advances the backend to the clock
            for unit in list(backend.units.values()):
                yield backend, unit

    def step(self) -> StepReport:
        now = self.clock.now()
        report = StepReport()
        pending = self._pending_by_group()
        requests = {g.id: g for g in self.request_groups()}
        for backend, unit in self._units():
            running = self.slots.get(unit.provider_id, [])
            if unit.state in (ProviderState.TERMINATED, ProviderState.STOPPING, ProviderState.FAILED):
                self._lose(running, unit, report)
                self.slots.pop(unit.provider_id, None)
                continue
            if unit.state != ProviderState.RUNNING:
                continue
            still = []
            for job in running:
                if job.ends_at <= now:
                    self._finish(job, report)
                else:
                    still.append(job)
            still.extend(self._fill(unit, still, pending, requests, now, report))
            self.slots[unit.provider_id] = still
            if unit.busy != bool(still):
                backend.set_busy(unit.provider_id, bool(still))
        return report

    def _finish(self, job: RunningJob, report: StepReport) -> None:
        report.finished += 1
        report.hs23_hours_done += job.hs23_hours
        report.hs23_hours_by_experiment[job.experiment] += job.hs23_hours
        self.delivered_hs23_hours[job.group_id] += job.hs23_hours
        if job.pending is None:
            self.request_finished[job.group_id] += 1

    def _lose(self, running: list[RunningJob], unit: SimUnit, report: StepReport) -> None:
        for job in running:
            if job.finished_before(unit):
                self._finish(job, report)
                continue
            report.requeued += 1
            if job.pending is not None and job.source is not None:
                job.source.requeue(job.pending)
            else:
                self.request_started[job.group_id] -= 1

    def _fill(
        self,
        unit: SimUnit,
        running: list[RunningJob],
        pending: dict[str, list[tuple[PendingJob, TraceSource]]],
        requests: Mapping[str, DemandGroup],
        now: datetime,
        report: StepReport,
    ) -> list[RunningJob]:
        group_id = unit.tags.get(TAG_GROUP)
        offering = self.offerings.get(unit.offering_id)
        if group_id is None or offering is None:
            return []
        free_cores = offering.cores - sum(j.cores for j in running)
        started: list[RunningJob] = []
        request = requests.get(group_id)
        if request is not None:
            slots = min(
                free_cores // request.cores_per_job,
                offering.gpu_count // request.gpus_per_job if request.gpus_per_job else math.inf,
                request.jobs - self.request_started[group_id],
            )
            hours = request.walltime_hours * request.reference_hs23_per_core / offering.hs23_per_core
            for _ in range(int(max(0, slots))):
                self.request_started[group_id] += 1
                started.append(
                    RunningJob(
                        f"{group_id}#{self.request_started[group_id]}",
                        group_id,
                        request.experiment,
                        now + timedelta(hours=hours),
                        request.cores_per_job,
                        request.hs23_hours_per_job,
                        None,
                        None,
                    )
                )
            report.started += len(started)
            return started
        queue = pending.get(group_id, [])
        while queue and free_cores >= queue[-1][0].cores:
            job, source = queue.pop()
            if source.take(job.job_id) is None:
                continue
            runtime_hours = source.runtime_hours(job.job_id)
            reference = REFERENCE_HS23_PER_CORE
            hours = runtime_hours * reference / offering.hs23_per_core
            free_cores -= job.cores
            started.append(
                RunningJob(
                    job.job_id,
                    group_id,
                    job.experiment,
                    now + timedelta(hours=hours),
                    job.cores,
                    job.cores * runtime_hours * reference,
                    job,
                    source,
                )
            )
        report.started += len(started)
        return started

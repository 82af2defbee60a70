"""HPC allocations as a `Backend`: each unit is a pilot job charged to the allocation's account.

Offerings are configured by the operator (the policies module builds them with `AllocationInfo`).
A unit is one whole node (`--exclusive`, all its memory) or, for offerings listed in `core_slices`,
a slice of `offering.cores` cores on one node. A pilot's time limit never reaches past the
allocation's end date: it is capped when submitted, and Slurm gets the end date as the job's
deadline (with `--time-min`), so a pilot that starts late is shortened or removed, never run past
the end. Each listing reports the walltime left (`walltime_left_hours=…`), and `offerings()` the
committed-hours ledger (settled, in flight, committed) that pacing keeps under the burn line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog

from backends.base import BackendResource, InvalidRequest, ProvisionRequest
from backends.slurm.client import (
    AccountingRecord,
    AccountingUnavailable,
    JobSpec,
    JobState,
    SlurmClient,
    SlurmJob,
)
from backends.slurm.pilot import PilotJobs, PilotPayload, PilotStatus, job_name, time_limit_minutes
from policies.pacing import booked_hours, pilot_hours_until_end
from provisioner.domain import AllocationInfo, Market, Offering

log = structlog.get_logger(__name__)

KIND = "pilot"
_QUEUED = frozenset({JobState.PENDING, JobState.CONFIGURING, JobState.REQUEUED})


def node_hours(records: Sequence[AccountingRecord], *, partition: str | None = None) -> float:
    """Node-hours charged by finished or running jobs (elapsed × nodes), optionally in one partition."""
    seconds = sum(
        r.elapsed_seconds * r.nodes for r in records if partition is None or r.partition == partition
    )
    return seconds / 3600


def booked_node_hours(jobs: Sequence[SlurmJob], alloc: AllocationInfo, now: datetime) -> tuple[float, float]:
    """(in flight, committed) node-hours of the allocation's live jobs, whoever submitted them:
    running jobs' remaining limit and queued jobs' whole limit, never past the end date."""
    in_flight = committed = 0.0
    for job in jobs:
        if job.account != alloc.account or job.partition != alloc.partition or job.state.finished:
            continue
        if job.time_limit_minutes is None:
            hours = pilot_hours_until_end(alloc, now)  # unlimited: it may run to the end
        else:
            hours = job.time_limit_minutes / 60
        if job.state is JobState.RUNNING or (job.start_time is not None and job.state not in _QUEUED):
            in_flight += booked_hours(hours, started=job.start_time, now=now, ends=alloc.ends) * job.nodes
        elif job.state in _QUEUED:
            committed += booked_hours(hours, started=None, now=now, ends=alloc.ends) * job.nodes
    return in_flight, committed


class SlurmAllocationBackend:
    """Pilots on an HPC allocation. Satisfies `backends.base.Backend`."""

    def __init__(
        self,
        name: str,
        client: SlurmClient,
        offerings: Sequence[Offering],
        *,
        broker_id: str,
        core_slices: Collection[str] = (),
        payload: PilotPayload | None = None,
        stop_dir: Path = Path("/tmp"),
        output: str = "/dev/null",
        default_walltime_hours: float = 1.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        for offering in offerings:
            if offering.allocation is None or offering.market is not Market.ALLOCATION:
                raise ValueError(
                    f"offering {offering.id}: an allocation offering needs market=allocation and AllocationInfo"
                )
        self.name = name
        self._offerings = {o.id: o for o in offerings}
        self._slices = frozenset(core_slices)
        self.payload = payload or PilotPayload()
        self._stop_dir = str(stop_dir)
        self._output = output
        self._default_walltime = default_walltime_hours
        self._clock = clock or (lambda: datetime.now(UTC))
        self.jobs = PilotJobs(backend_name=name, client=client, broker_id=broker_id, kind=KIND, clock=clock)
        self.client = client
        # our own record of every pilot seen: the balance fallback when slurmdbd is absent
        self._seen: dict[str, AccountingRecord] = {}

    def _spec(self, request: ProvisionRequest) -> JobSpec:
        offering = self._offerings.get(request.offering.id)
        if offering is None or offering.allocation is None:
            raise InvalidRequest(
                self.name,
                "offering is not one of this backend's allocations",
                offering_id=request.offering.id,
            )
        alloc = offering.allocation
        hours = request.walltime_hours or offering.max_walltime_hours or self._default_walltime
        if offering.max_walltime_hours is not None:
            hours = min(hours, offering.max_walltime_hours)
        limit = time_limit_minutes(hours)
        # nothing may run past the end date: whole minutes left before it, rounded down
        until_end = math.floor(pilot_hours_until_end(alloc, self._clock()) * 60 + 1e-9)
        if until_end < 1:
            raise InvalidRequest(
                self.name,
                f"allocation {alloc.name} ends at {alloc.ends:%Y-%m-%d %H:%M} UTC",
                offering_id=offering.id,
            )
        limit = min(limit, until_end)
        whole_node = offering.id not in self._slices
        pay = self.payload
        return JobSpec(
            name=job_name(KIND, request.resource_id),
            script=pay.script(request, stop_dir=self._stop_dir),
            partition=alloc.partition,
            time_limit_minutes=limit,
            comment=self.jobs.comment(request),
            account=alloc.account,
            qos=pay.qos or alloc.qos,
            nodes=1 if whole_node else None,
            cores=None if whole_node else offering.cores,
            # an exclusive pilot gets all of its node's memory (Slurm's --mem=0), not the default share
            memory_mb=pay.memory_mb if pay.memory_mb is not None else (0 if whole_node else None),
            gpus=offering.gpu_count,  # GRES are allocated only when asked for, even with --exclusive
            features=pay.constraint,
            output=self._output,
            deadline=alloc.ends,
            time_min_minutes=min(limit, pay.min_minutes),
        )

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        return await self.jobs.submit(request, self._spec(request))

    async def pilots(self) -> list[PilotStatus]:
        """Every pilot of ours the controller knows, with the walltime each has left."""
        statuses = await self.jobs.statuses()
        for s in statuses:
            self._remember(s)
        return statuses

    def _remember(self, status: PilotStatus) -> None:
        job = status.job
        if job.start_time is None:
            return
        end = job.end_time if job.state.finished and job.end_time else self._clock()
        self._seen[job.job_id] = AccountingRecord(
            job_id=job.job_id,
            name=job.name,
            state=job.state,
            partition=job.partition,
            account=job.account,
            user=job.user,
            submit_time=job.submit_time,
            start_time=job.start_time,
            end_time=job.end_time if job.state.finished else None,
            elapsed_seconds=max(0, int((end - job.start_time).total_seconds())),
            cpu_seconds=None,
            nodes=job.nodes,
            cpus=job.cpus,
        )

    async def list_resources(self) -> list[BackendResource]:
        return [s.resource for s in await self.pilots()]

    async def release(self, provider_id: str) -> None:
        await self.jobs.release(provider_id)

    async def allocation_balance(self, offering: Offering) -> float:
        """Node-hours used on the allocation since it started: sacct for the account, else our pilots."""
        alloc = offering.allocation
        if alloc is None:
            raise ValueError(f"offering {offering.id} has no allocation")
        if self._clock() <= alloc.starts:
            return 0.0  # not started: nothing charged yet (and sacct refuses a start in the future)
        try:
            records = await self.client.accounting(since=alloc.starts, accounts=[alloc.account])
        except AccountingUnavailable:
            await self.pilots()
            records = [
                r
                for r in self._seen.values()
                if r.account == alloc.account and r.start_time is not None and r.start_time >= alloc.starts
            ]
            log.info("slurm.allocation.balance_from_own_records", backend=self.name, allocation=alloc.name)
        return node_hours(records, partition=alloc.partition)

    async def offerings(self) -> list[Offering]:
        """The allocations with their ledger now: settled (sacct), in flight and committed (squeue)."""
        out = []
        live = await self.client.jobs()
        now = self._clock()
        for offering in self._offerings.values():
            assert offering.allocation is not None
            used = await self.allocation_balance(offering)
            in_flight, committed = booked_node_hours(live, offering.allocation, now)
            info = dataclasses.replace(
                offering.allocation,
                node_hours_used=used,
                node_hours_in_flight=in_flight,
                node_hours_committed=committed,
            )
            out.append(dataclasses.replace(offering, allocation=info))
        return out

    async def close(self) -> None:
        await self.client.close()

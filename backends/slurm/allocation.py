"""HPC allocations as a `Backend`: each unit is a pilot job charged to the allocation's account.

Offerings are configured by the operator (the policies module builds them with `AllocationInfo`).
A unit is one whole node (`--exclusive`) or, for offerings listed in `core_slices`, a slice of
`offering.cores` cores on one node. The pilot's walltime left is reported in each listing's
`detail` (`walltime_left_hours=…`) and by `pilots()`, so the planner can drain before Slurm kills it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog

from backends.base import BackendResource, InvalidRequest, ProvisionRequest
from backends.slurm.client import AccountingRecord, AccountingUnavailable, JobSpec, SlurmClient
from backends.slurm.pilot import DEFAULT_PILOT_SCRIPT, PilotJobs, PilotStatus, job_name, time_limit_minutes
from provisioner.domain import Market, Offering

log = structlog.get_logger(__name__)

KIND = "pilot"


def node_hours(records: Sequence[AccountingRecord], *, partition: str | None = None) -> float:
    """Node-hours charged by finished or running jobs (elapsed × nodes), optionally in one partition."""
    seconds = sum(
        r.elapsed_seconds * r.nodes for r in records if partition is None or r.partition == partition
    )
    return seconds / 3600


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
        pilot_script: str | None = None,
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
        self._script = pilot_script or DEFAULT_PILOT_SCRIPT.format(stop_dir=stop_dir)
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
        whole_node = offering.id not in self._slices
        return JobSpec(
            name=job_name(KIND, request.resource_id),
            script=self._script,
            partition=alloc.partition,
            time_limit_minutes=time_limit_minutes(hours),
            comment=self.jobs.comment(request),
            account=alloc.account,
            qos=alloc.qos,
            nodes=1 if whole_node else None,
            cores=None if whole_node else offering.cores,
            gpus=offering.gpu_count,  # GRES are allocated only when asked for, even with --exclusive
            output=self._output,
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
        out = []
        for offering in self._offerings.values():
            assert offering.allocation is not None
            used = await self.allocation_balance(offering)
            out.append(
                dataclasses.replace(
                    offering, allocation=dataclasses.replace(offering.allocation, node_hours_used=used)
                )
            )
        return out

    async def close(self) -> None:
        await self.client.close()

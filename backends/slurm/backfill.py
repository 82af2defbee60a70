"""Opportunistic backfill as a `Backend`: preemptible jobs on idle nodes of a low-priority partition.

The partition (e.g. `scavenger`, PriorityTier below the owners' partitions, PreemptMode=CANCEL)
lets Slurm itself preempt our jobs the moment owner work arrives; `evacuate(nodes)` does the same
on demand, cancelling every backfill job on the given nodes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import structlog

from backends.base import BackendResource, InvalidRequest, ProvisionRequest
from backends.slurm.client import JobSpec, JobState, SlurmClient, SlurmNode
from backends.slurm.hostlist import expand_hostlist
from backends.slurm.pilot import PilotJobs, PilotPayload, PilotStatus, job_name, time_limit_minutes
from provisioner.domain import Market, Offering

log = structlog.get_logger(__name__)

KIND = "backfill"
_LIVE = frozenset({JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING, JobState.REQUEUED})


class SlurmBackfillBackend:
    """Backfill jobs in `partition`, one unit = `offering.cores` cores (or a whole node). A `Backend`."""

    def __init__(
        self,
        name: str,
        client: SlurmClient,
        offering: Offering,
        *,
        broker_id: str,
        partition: str = "scavenger",
        account: str | None = None,
        qos: str | None = None,
        whole_nodes: bool = False,
        payload: PilotPayload | None = None,
        stop_dir: Path = Path("/tmp"),
        output: str = "/dev/null",
        default_walltime_hours: float = 1.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if offering.market is not Market.BACKFILL:
            raise ValueError(f"offering {offering.id}: a backfill offering needs market=backfill")
        self.name = name
        self.client = client
        self.partition = partition
        self._offering = offering
        self._account = account
        self._qos = qos
        self._whole = whole_nodes
        self.payload = payload or PilotPayload()
        self._stop_dir = str(stop_dir)
        self._output = output
        self._default_walltime = default_walltime_hours
        self.jobs = PilotJobs(backend_name=name, client=client, broker_id=broker_id, kind=KIND, clock=clock)

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        if request.offering.id != self._offering.id:
            raise InvalidRequest(
                self.name, "not this backend's backfill offering", offering_id=request.offering.id
            )
        hours = request.walltime_hours or self._offering.max_walltime_hours or self._default_walltime
        spec = JobSpec(
            name=job_name(KIND, request.resource_id),
            script=self.payload.script(request, stop_dir=self._stop_dir),
            partition=self.partition,
            time_limit_minutes=time_limit_minutes(hours),
            comment=self.jobs.comment(request),
            account=self._account or request.experiment,
            qos=self.payload.qos or self._qos,
            nodes=1 if self._whole else None,
            cores=None if self._whole else self._offering.cores,
            memory_mb=self.payload.memory_mb
            if self.payload.memory_mb is not None
            else (0 if self._whole else None),
            features=self.payload.constraint,
            output=self._output,
        )
        return await self.jobs.submit(request, spec)

    async def backfill_jobs(self) -> list[PilotStatus]:
        return await self.jobs.statuses()

    async def list_resources(self) -> list[BackendResource]:
        return [s.resource for s in await self.backfill_jobs()]

    async def release(self, provider_id: str) -> None:
        await self.jobs.release(provider_id)

    async def evacuate(self, nodes: Collection[str]) -> list[str]:
        """Cancel every live backfill job of ours touching `nodes`, concurrently; return their job ids."""
        wanted = set(nodes)
        victims = [
            s.job.job_id
            for s in await self.backfill_jobs()
            if s.job.state in _LIVE and wanted.intersection(expand_hostlist(s.job.node_list))
        ]
        await asyncio.gather(*(self.jobs.release(job_id) for job_id in victims))
        log.info("slurm.backfill.evacuated", backend=self.name, nodes=sorted(wanted), jobs=victims)
        return victims

    async def pool_nodes(self) -> list[SlurmNode]:
        """Nodes of the backfill partition that are up and schedulable (idle or partly used)."""
        return [
            n
            for n in await self.client.nodes()
            if self.partition in n.partitions
            and n.state in ("idle", "mixed")
            and not (n.flags & {"DRAIN", "POWERED_DOWN", "POWERING_UP", "NOT_RESPONDING"})
        ]

    async def free_slots(self) -> int:
        """How many more units fit on the pool's free cores right now."""
        nodes = await self.pool_nodes()
        if self._whole:
            return sum(1 for n in nodes if n.alloc_cpus == 0)
        return sum((n.cpus - n.alloc_cpus) // max(1, self._offering.cores) for n in nodes)

    async def offerings(self) -> list[Offering]:
        """The backfill offering with `capacity_units` = the free slots in the pool now."""
        return [replace(self._offering, capacity_units=await self.free_slots())]

    async def close(self) -> None:
        await self.client.close()

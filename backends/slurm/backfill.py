"""Opportunistic backfill as a `Backend`: preemptible jobs on idle nodes of a low-priority partition.

The partition (e.g. `scavenger`, PriorityTier below the owners' partitions, PreemptMode=CANCEL)
lets Slurm itself preempt our jobs the moment owner work arrives; `evacuate(nodes)` does the same
on demand, cancelling every backfill job on the given nodes at once, and `evacuate_for_owners()` (called by the
engine every cycle, before listing) evacuates the nodes that owner jobs are waiting for — also where
the site has not set up preemption. Our jobs it evacuated, and those Slurm preempted, are listed
with an interruption notice (owner reclaim, not lost), and no new unit is offered on a node that
owner work runs on or waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import structlog

from backends.base import BackendResource, InvalidRequest, ProvisionRequest
from backends.slurm.client import JobSpec, JobState, SlurmClient, SlurmJob, SlurmNode
from backends.slurm.hostlist import expand_hostlist
from backends.slurm.pilot import PilotJobs, PilotPayload, PilotStatus, job_name, time_limit_minutes
from provisioner.domain import Market, Offering

log = structlog.get_logger(__name__)

KIND = "backfill"
_LIVE = frozenset({JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING, JobState.REQUEUED})
# An owner job pending for one of these is waiting for nodes: backfill on them is in its way.
_WAITING_FOR_NODES = ("Resources", "Priority", "Nodes_required", "ReqNodeNotAvail", None)


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
        self._reclaimed: set[str] = set()  # our job ids evacuated for owner work

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
        out = []
        for s in await self.backfill_jobs():
            resource = s.resource
            if s.job.job_id in self._reclaimed or s.job.state is JobState.PREEMPTED:
                resource = replace(
                    resource,
                    interruption_notice=True,
                    detail=f"{resource.detail}; owner reclaim".lstrip("; "),
                )
            out.append(resource)
        return out

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

    def _owner_job(self, job: SlurmJob) -> bool:
        return job.partition != self.partition and not self.jobs.ours(job)

    async def _owner_claims(self) -> tuple[set[str], set[str]]:
        """(nodes owner jobs run on, nodes owner jobs wait for) among the pool's nodes.

        A pending owner job waits for as many pool nodes of its partition as it asks for: those that
        would have the most cores free once our units left, and of these the ones already freest, so
        as few backfill units go as possible (and the choice holds once they have gone).
        """
        jobs, nodes = await asyncio.gather(self.client.jobs(), self.client.nodes())
        pool = {n.name: n for n in nodes if self.partition in n.partitions}
        free = {h: n.cpus - n.alloc_cpus for h, n in pool.items()}
        ours: dict[str, int] = {}
        for s in await self.jobs.statuses():
            if s.job.state in _LIVE:
                for host in expand_hostlist(s.job.node_list):
                    ours[host] = ours.get(host, 0) + s.job.cpus
        running: set[str] = set()
        wanted: set[str] = set()
        for job in sorted(jobs, key=lambda j: -j.priority):
            if not self._owner_job(job):
                continue
            if job.state is JobState.RUNNING:
                running.update(h for h in expand_hostlist(job.node_list) if h in pool)
            elif job.state is JobState.PENDING and job.reason in _WAITING_FOR_NODES:
                candidates = sorted(
                    (h for h, n in pool.items() if job.partition in n.partitions and h not in wanted),
                    key=lambda h: (-(free[h] + ours.get(h, 0)), -free[h], h),
                )
                wanted.update(candidates[: max(1, job.nodes)])
        return running, wanted

    async def evacuate_for_owners(self) -> list[str]:
        """Evacuate our jobs from the pool's nodes that owner jobs are waiting for; their job ids."""
        _, wanted = await self._owner_claims()
        if not wanted:
            return []
        victims = await self.evacuate(wanted)
        self._reclaimed.update(victims)
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
        """How many more units fit on the pool's free cores right now, leaving alone every node that
        owner work runs on or waits for."""
        running, wanted = await self._owner_claims()
        nodes = [n for n in await self.pool_nodes() if n.name not in running | wanted]
        if self._whole:
            return sum(1 for n in nodes if n.alloc_cpus == 0)
        return sum((n.cpus - n.alloc_cpus) // max(1, self._offering.cores) for n in nodes)

    async def offerings(self) -> list[Offering]:
        """The backfill offering with `capacity_units` = our live units + the free slots in the pool now
        (the planner takes the live fleet off the capacity itself)."""
        live = sum(1 for s in await self.backfill_jobs() if s.job.state in _LIVE)
        return [replace(self._offering, capacity_units=live + await self.free_slots())]

    async def close(self) -> None:
        await self.client.close()

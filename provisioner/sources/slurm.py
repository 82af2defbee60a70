"""Pending jobs in Slurm queues as the broker's demand (`WorkloadSource`): what Slurm could start with more capacity.

A job array counts each task it still has to run (up to its `%N` throttle), an `--exclusive` job and
every node of a multi-node job count as whole nodes of the partition, and jobs that no new capacity
would start (held, waiting on a dependency or a start time, blocked by a partition, QOS or
association limit) are left out and kept in `skipped` with Slurm's reason, for `provisioner plan`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace

from backends.slurm.client import JobState, SlurmClient, SlurmJob, SlurmNode
from backends.slurm.pilot import parse_job_name
from provisioner.domain import Arch, PendingJob
from provisioner.sources.base import SkippedJob

# Pending reasons that capacity cannot cure: held jobs, unmet dependencies, future start times,
# partitions that are down or refuse the job, accounts/QOS the job may not use.
NOT_DEMAND_REASONS = frozenset(
    {
        "JobHeldUser",
        "JobHeldAdmin",
        "Dependency",
        "DependencyNeverSatisfied",
        "BeginTime",
        "PartitionDown",
        "PartitionInactive",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "PartitionConfig",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "BadConstraints",
        "Reservation",
        "FrontEndDown",
        "JobArrayTaskLimit",
        "AccountingPolicy",
        "InactiveLimit",
    }
)
# Every QOS and association limit (QOSMaxCpuPerUserLimit, AssocGrpNodeLimit...): the limit, not the
# cluster's size, keeps the job waiting.
NOT_DEMAND_PREFIXES = ("QOS", "Assoc")
_ARCHS = {"x86_64": Arch.X86_64, "amd64": Arch.X86_64, "aarch64": Arch.ARM64, "arm64": Arch.ARM64}
_STARTED = frozenset({JobState.RUNNING, JobState.CONFIGURING, JobState.COMPLETING, JobState.SUSPENDED})


def job_archs(features: str) -> frozenset[Arch]:
    """Architectures a job accepts, from its --constraint ('x86_64', 'aarch64|x86_64', 'arm64&gpu')."""
    words = {
        w.lower()
        for w in features.replace("|", ",").replace("&", ",").replace("[", "").replace("]", "").split(",")
    }
    found = frozenset(_ARCHS[w] for w in words if w in _ARCHS)
    return found or frozenset({Arch.X86_64})


def array_task_count(tasks: str) -> int:
    """How many tasks Slurm's array notation names: '0-9' → 10, '1,3,5-7' → 5, '0-15:4%2' → 4."""
    spec = tasks.strip().strip("[]").split("%", 1)[0]
    count = 0
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        if not last:
            count += 1
            continue
        count += len(range(int(first), int(last) + 1, int(step or 1)))
    return count


def cured_by_capacity(reason: str | None) -> bool:
    """Whether more nodes could start a job pending for this reason (Resources, Priority: yes)."""
    if reason is None:
        return True
    return reason not in NOT_DEMAND_REASONS and not reason.startswith(NOT_DEMAND_PREFIXES)


@dataclass(frozen=True, slots=True)
class ExperimentMap:
    """Which experiment a Slurm job (or node) is charged to: by account, else by partition, else the
    account's own name, else the partition's."""

    by_account: Mapping[str, str]
    by_partition: Mapping[str, str]
    default: str = "unknown"

    def experiment(self, account: str | None, partition: str | None) -> str:
        if account and account in self.by_account:
            return self.by_account[account]
        for p in (partition or "").split(","):
            if p in self.by_partition:
                return self.by_partition[p]
        return account or (partition or "").split(",")[0] or self.default


@dataclass(frozen=True, slots=True)
class NodeShape:
    cpus: int
    memory_mb: int


def partition_shapes(nodes: Collection[SlurmNode]) -> dict[str, NodeShape]:
    """The usual node of each partition (the most common cpus/memory among its nodes)."""
    by_partition: dict[str, Counter[tuple[int, int]]] = {}
    for n in nodes:
        for p in n.partitions:
            by_partition.setdefault(p, Counter())[(n.cpus, n.memory_mb)] += 1
    return {p: NodeShape(*c.most_common(1)[0][0]) for p, c in by_partition.items() if c}


class SlurmWorkloadSource:
    """Pending jobs of selected partitions/accounts/QOS; the broker's own pilots are never demand."""

    def __init__(
        self,
        client: SlurmClient,
        *,
        partitions: Collection[str] | None = None,
        accounts: Collection[str] | None = None,
        qos: Collection[str] | None = None,
        preemptible_partitions: Collection[str] = ("scavenger",),
        preemptible_qos: Collection[str] = (),
        ignore_reasons: Collection[str] = NOT_DEMAND_REASONS,
        default_walltime_hours: float = 24.0,
        experiment_of: Callable[[str | None], str] | None = None,
        experiments: ExperimentMap | None = None,
        gpu_models: Collection[str] = (),
        poll_seconds: float = 0.0,
        name: str = "slurm",
    ) -> None:
        self.name = name
        self.poll_seconds = poll_seconds  # between cycles, look for new submissions this often (0: never)
        self._seen: set[str] | None = None
        self._client = client
        self._partitions = frozenset(partitions) if partitions else None
        self._accounts = frozenset(accounts) if accounts else None
        self._qos = frozenset(qos) if qos else None
        self._preemptible = frozenset(preemptible_partitions)
        self._preemptible_qos = frozenset(preemptible_qos)
        self._ignore = frozenset(ignore_reasons)
        self._default_walltime = default_walltime_hours
        self._experiments = experiments
        self._experiment_of = experiment_of or (lambda account: account or "unknown")
        # the catalog's and the policy's spelling of each GPU model, by its case-folded name
        self._gpu_models = {m.casefold(): m for m in gpu_models}
        self.skipped: list[SkippedJob] = []  # of the last `pending()` call

    def experiment(self, account: str | None, partition: str | None) -> str:
        if self._experiments is not None:
            return self._experiments.experiment(account, partition)
        return self._experiment_of(account)

    def gpu_model(self, model: str | None) -> str | None:
        """Slurm's typed GRES (`gpu:a100`) in the spelling offerings and policies use (`A100`)."""
        if model is None:
            return None
        return self._gpu_models.get(model.casefold(), model)

    def _selected(self, job: SlurmJob) -> bool:
        if job.state is not JobState.PENDING or parse_job_name(job.name) is not None:
            return False
        # a job submitted to several partitions lists them comma-separated
        if self._partitions is not None and not self._partitions.intersection(job.partition.split(",")):
            return False
        if self._accounts is not None and job.account not in self._accounts:
            return False
        return self._qos is None or job.qos in self._qos

    def _blocked(self, job: SlurmJob) -> bool:
        return job.reason is not None and (job.reason in self._ignore or not cured_by_capacity(job.reason))

    def _preemptible_job(self, job: SlurmJob) -> bool:
        if self._preemptible.intersection(job.partition.split(",")):
            return True
        return job.qos is not None and job.qos in self._preemptible_qos

    def _shape(self, job: SlurmJob, shapes: Mapping[str, NodeShape]) -> NodeShape | None:
        for p in job.partition.split(","):
            if p in shapes:
                return shapes[p]
        return None

    def to_pending(self, job: SlurmJob, shapes: Mapping[str, NodeShape] | None = None) -> list[PendingJob]:
        """One entry per node the job needs at once: a single-node job as it asks, an exclusive or
        multi-node job as whole nodes of its partition (as it asks when the partition is unknown)."""
        nodes = max(1, job.nodes)
        shape = self._shape(job, shapes or {})
        whole = job.exclusive or nodes > 1
        if whole and shape is not None:
            cores, memory_mb = max(shape.cpus, math.ceil(job.cpus / nodes)), float(shape.memory_mb)
        else:
            cores = max(1, math.ceil(job.cpus / nodes))
            memory_mb = (job.memory_mb or 0) / nodes
        gpus = job.gpus_per_node if job.gpus_per_node is not None else math.ceil(job.gpus / nodes)
        limit = job.time_limit_minutes
        base = PendingJob(
            job_id=job.job_id,
            experiment=self.experiment(job.account, job.partition),
            cores=cores,
            memory_gb=memory_mb / 1024,
            walltime_hours=limit / 60 if limit else self._default_walltime,
            archs=job_archs(job.features),
            gpus=gpus,
            gpu_model=self.gpu_model(job.gpu_model),
            preemptible=self._preemptible_job(job),
            # Slurm priorities are large scheduler numbers; grouping by them would split every group
            priority=0,
            partition=job.partition,
            account=job.account,
            qos=job.qos,
            reason=job.reason,
        )
        if nodes == 1:
            return [base]
        return [_with_id(base, f"{job.job_id}+node{k}") for k in range(nodes)]

    def _tasks(self, job: SlurmJob, started: Mapping[str, int]) -> int:
        """Tasks of this record Slurm could start now: every pending array task, up to the throttle."""
        if not job.array_tasks:
            return 1
        tasks = array_task_count(job.array_tasks)
        if job.array_max_tasks and job.array_job_id is not None:
            tasks = min(tasks, max(0, job.array_max_tasks - started.get(job.array_job_id, 0)))
        return tasks

    def _waiting(self, jobs: Collection[SlurmJob]) -> set[str]:
        return {j.job_id for j in jobs if self._selected(j) and not self._blocked(j)}

    async def new_submissions(self) -> bool:
        """Whether a job that capacity could start appeared since the last look, this call's or the
        last cycle's (one squeue). The very first look only notes what is there."""
        waiting = self._waiting(await self._client.jobs())
        seen, self._seen = self._seen, waiting
        return seen is not None and bool(waiting - seen)

    async def pending(self) -> list[PendingJob]:
        jobs = await self._client.jobs()
        self._seen = self._waiting(jobs)  # the cycle has seen these: they are not news
        selected = [j for j in jobs if self._selected(j)]
        started = Counter(j.array_job_id for j in jobs if j.array_job_id is not None and j.state in _STARTED)
        shapes: dict[str, NodeShape] = {}
        if any(j.exclusive or j.nodes > 1 for j in selected):
            shapes = partition_shapes(await self._client.nodes())
        out: list[PendingJob] = []
        skipped: list[SkippedJob] = []
        for job in selected:
            entries = self.to_pending(job, shapes)
            tasks = self._tasks(job, started)
            if self._blocked(job) or tasks == 0:
                reason = job.reason or "JobArrayTaskLimit"
                n = array_task_count(job.array_tasks) if job.array_tasks else 1
                cores = sum(e.cores for e in entries) * n
                skipped.append(SkippedJob(job.job_id, entries[0].experiment, job.partition, reason, n, cores))
                continue
            if tasks == 1:
                out.extend(entries)
                continue
            for t in range(tasks):
                out.extend(_with_id(e, f"{e.job_id}[{t}]") for e in entries)
        self.skipped = skipped
        return out


def _with_id(job: PendingJob, job_id: str) -> PendingJob:
    return replace(job, job_id=job_id)

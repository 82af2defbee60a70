"""Pending jobs in Slurm queues as the broker's demand (`WorkloadSource`)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from backends.slurm.client import JobState, SlurmClient, SlurmJob
from backends.slurm.pilot import parse_job_name
from provisioner.domain import Arch, PendingJob

# Pending reasons that capacity cannot cure: held jobs, unmet dependencies, future start times.
NOT_DEMAND_REASONS = frozenset(
    {"JobHeldUser", "JobHeldAdmin", "Dependency", "DependencyNeverSatisfied", "BeginTime", "PartitionDown"}
)
_ARCHS = {"x86_64": Arch.X86_64, "amd64": Arch.X86_64, "aarch64": Arch.ARM64, "arm64": Arch.ARM64}


def job_archs(features: str) -> frozenset[Arch]:
    """Architectures a job accepts, from its --constraint ('x86_64', 'aarch64|x86_64', 'arm64&gpu')."""
    words = {
        w.lower()
        for w in features.replace("|", ",").replace("&", ",").replace("[", "").replace("]", "").split(",")
    }
    found = frozenset(_ARCHS[w] for w in words if w in _ARCHS)
    return found or frozenset({Arch.X86_64})


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
        ignore_reasons: Collection[str] = NOT_DEMAND_REASONS,
        default_walltime_hours: float = 24.0,
        experiment_of: Callable[[str | None], str] | None = None,
        name: str = "slurm",
    ) -> None:
        self.name = name
        self._client = client
        self._partitions = frozenset(partitions) if partitions else None
        self._accounts = frozenset(accounts) if accounts else None
        self._qos = frozenset(qos) if qos else None
        self._preemptible = frozenset(preemptible_partitions)
        self._ignore = frozenset(ignore_reasons)
        self._default_walltime = default_walltime_hours
        self._experiment_of = experiment_of or (lambda account: account or "unknown")

    def _wanted(self, job: SlurmJob) -> bool:
        if job.state is not JobState.PENDING or parse_job_name(job.name) is not None:
            return False
        if job.reason in self._ignore:
            return False
        # a job submitted to several partitions lists them comma-separated
        if self._partitions is not None and not self._partitions.intersection(job.partition.split(",")):
            return False
        if self._accounts is not None and job.account not in self._accounts:
            return False
        return self._qos is None or job.qos in self._qos

    def to_pending(self, job: SlurmJob) -> PendingJob:
        cpus = max(1, job.cpus)
        limit = job.time_limit_minutes
        return PendingJob(
            job_id=job.job_id,
            experiment=self._experiment_of(job.account),
            cores=cpus,
            memory_gb=(job.memory_mb or 0) / 1024,
            walltime_hours=limit / 60 if limit else self._default_walltime,
            archs=job_archs(job.features),
            gpus=job.gpus,
            gpu_model=job.gpu_model,
            preemptible=bool(self._preemptible.intersection(job.partition.split(","))),
            # Slurm priorities are large scheduler numbers; grouping by them would split every group
            priority=0,
            partition=job.partition,
            account=job.account,
            qos=job.qos,
            reason=job.reason,
        )

    async def pending(self) -> list[PendingJob]:
        return [self.to_pending(j) for j in await self._client.jobs() if self._wanted(j)]

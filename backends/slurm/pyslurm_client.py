"""`SlurmClient` over pyslurm, for sites where pyslurm is installed and built for the site's Slurm.

pyslurm is version-locked to the Slurm it compiles against (PyPI carries 25.11 only); on Debian 12
(Slurm 22.05) it cannot be installed, so this client has never run against a cluster here.
`PyslurmClient.open()` refuses to start unless pyslurm imports and its major.minor matches `sinfo
--version`, and the contract tests run it wherever that holds. Written for the pyslurm 23+ API
(`pyslurm.Jobs.load`, `pyslurm.Nodes.load`, `pyslurm.JobSubmitDescription`, `pyslurm.db.Jobs`).
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from backends.base import BackendError
from backends.slurm.client import (
    BACKEND,
    AccountingRecord,
    AccountingUnavailable,
    JobSpec,
    JobState,
    SlurmJob,
    SlurmNode,
)
from backends.slurm.openapi import epoch, gres_gpus


class PyslurmUnavailable(RuntimeError):
    """pyslurm does not import here, or was built for another Slurm release."""


def site_slurm_version() -> str:
    """'22.05' from `sinfo --version` ('slurm-wlm 22.05.8')."""
    out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False).stdout
    parts = out.split()[-1].split(".") if out.split() else []
    return ".".join(parts[:2])


def load_pyslurm() -> ModuleType:
    """Import pyslurm and check it was built for this site's Slurm; raise PyslurmUnavailable if not."""
    site = site_slurm_version()
    try:
        module = importlib.import_module("pyslurm")
    except ImportError as err:
        raise PyslurmUnavailable(
            f"pyslurm not importable ({err}); PyPI's pyslurm is built for Slurm 25.11, site has {site}"
        ) from None
    built = ".".join(str(getattr(module, "__version__", "")).split(".")[:2])
    if built and site and built != site:
        raise PyslurmUnavailable(f"pyslurm built for Slurm {built}, site has {site}")
    return module


def _dt(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return epoch(value)


def _gpus(gres: Any) -> tuple[int, str | None]:
    """pyslurm gres dicts ({'gpu:a100': 2} or {'gpu': 2}) or strings."""
    if isinstance(gres, dict):
        count, model = 0, None
        for key, value in gres.items():
            if str(key).split(":")[0] == "gpu":
                count += int(value)
                model = str(key).split(":", 1)[1] if ":" in str(key) else model
        return count, model
    return gres_gpus(str(gres or ""))


class PyslurmClient:
    """Calls pyslurm (a C extension, blocking) in worker threads."""

    name = "pyslurm"

    def __init__(self, module: ModuleType) -> None:
        self._m = module

    @classmethod
    def open(cls) -> PyslurmClient:
        return cls(load_pyslurm())

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except self._m.RPCError as err:
            raise BackendError(BACKEND, f"pyslurm: {err}") from None

    def _job(self, j: Any) -> SlurmJob:
        gpus, model = _gpus(getattr(j, "gres_per_node", None))
        return SlurmJob(
            job_id=str(j.id),
            name=str(j.name or ""),
            state=JobState.parse(str(j.state)),
            partition=str(j.partition or ""),
            comment=str(j.comment or ""),
            reason=None if j.state_reason in (None, "None") else str(j.state_reason),
            account=j.account,
            qos=j.qos,
            user=getattr(j, "user_name", None),
            nodes=int(j.num_nodes or 1),
            cpus=int(j.cpus or 1),
            memory_mb=getattr(j, "memory", None),
            gpus=gpus,
            gpu_model=model,
            features=",".join(getattr(j, "required_features", None) or ()),
            time_limit_minutes=j.time_limit,
            submit_time=_dt(j.submit_time),
            start_time=_dt(j.start_time),
            end_time=_dt(j.end_time),
            node_list=str(j.allocated_nodes or ""),
            priority=int(j.priority or 0),
        )

    async def submit(self, spec: JobSpec) -> str:
        desc: dict[str, Any] = {
            "name": spec.name,
            "script": spec.script,
            "partitions": spec.partition,
            "time_limit": spec.time_limit_minutes,
            "standard_output": spec.output,
            "working_directory": spec.workdir,
            "is_requeueable": spec.requeue,
            "comment": spec.comment or None,
            "account": spec.account,
            "qos": spec.qos,
            "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        }
        if spec.nodes is not None:
            desc.update(nodes=spec.nodes, resource_sharing="exclusive")
        else:
            desc.update(nodes=1, ntasks=1, cpus_per_task=spec.cores)
        if spec.memory_mb is not None:
            desc["memory_per_node"] = f"{spec.memory_mb}M"
        if spec.gpus:
            desc["gres_per_node"] = f"gpu:{spec.gpus}"
        if spec.features:
            desc["required_features"] = spec.features
        if spec.hold:
            desc["priority"] = 0  # pyslurm holds a job by submitting it with priority 0
        description = self._m.JobSubmitDescription(**{k: v for k, v in desc.items() if v is not None})
        return str(await self._call(description.submit))

    async def jobs(self) -> list[SlurmJob]:
        loaded = await self._call(self._m.Jobs.load)
        return [self._job(j) for j in loaded.values()]

    async def job(self, job_id: str) -> SlurmJob | None:
        for job in await self.jobs():
            if job.job_id == job_id:
                return job
        return None

    async def cancel(self, job_id: str) -> None:
        try:
            await self._call(self._m.Job(int(job_id)).cancel)
        except BackendError as err:
            if "invalid job id" in str(err).lower() or "already completing" in str(err).lower():
                return
            raise

    async def nodes(self) -> list[SlurmNode]:
        loaded = await self._call(self._m.Nodes.load)
        out = []
        for n in loaded.values():
            gpus, model = _gpus(getattr(n, "configured_gres", None))
            out.append(
                SlurmNode(
                    name=str(n.name),
                    state=str(n.state).lower(),
                    flags=frozenset(str(f).upper() for f in _iter(getattr(n, "state_flags", None))),
                    cpus=int(n.total_cpus or 0),
                    alloc_cpus=int(n.allocated_cpus or 0),
                    memory_mb=int(n.real_memory or 0),
                    gpus=gpus,
                    gpu_model=model,
                    features=frozenset(_iter(n.active_features)),
                    partitions=tuple(_iter(n.partitions)),
                    arch=n.architecture,
                )
            )
        return out

    async def accounting(
        self, *, since: datetime, accounts: Collection[str] | None = None
    ) -> list[AccountingRecord]:
        db = getattr(self._m, "db", None)
        if db is None:
            raise AccountingUnavailable(BACKEND, "pyslurm has no db module")
        flt = db.JobFilter(start_time=since, accounts=list(accounts) if accounts else None)
        try:
            loaded = await asyncio.to_thread(db.Jobs.load, flt)
        except self._m.RPCError as err:
            raise AccountingUnavailable(BACKEND, f"pyslurm db: {err}") from None
        out = []
        for j in loaded.values():
            gpus, model = _gpus(getattr(j, "gres_per_node", None))
            out.append(
                AccountingRecord(
                    job_id=str(j.id),
                    name=str(j.name or ""),
                    state=JobState.parse(str(j.state)),
                    partition=str(j.partition or ""),
                    account=j.account,
                    user=getattr(j, "user_name", None),
                    submit_time=_dt(j.submit_time),
                    start_time=_dt(j.start_time),
                    end_time=_dt(j.end_time),
                    elapsed_seconds=int(j.elapsed_time or 0),
                    cpu_seconds=int(j.total_cpu_time or 0),
                    nodes=int(j.num_nodes or 1),
                    cpus=int(j.cpus or 1),
                    memory_mb=getattr(j, "memory", None),
                    gpus=gpus,
                    gpu_model=model,
                    qos=j.qos,
                    comment=str(getattr(j, "comment", "") or ""),
                    node_list=str(j.nodelist or ""),
                    cluster=j.cluster,
                )
            )
        return out

    async def close(self) -> None:
        return None


def _iter(value: Any) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value]

"""`SlurmClient` over pyslurm, for sites where pyslurm is installed and built for the site's Slurm.

Written against pyslurm 22.5.3's object API (the release for Slurm 22.05, which this project's site and
test cluster run; the same names exist in later releases): `pyslurm.Jobs.load()` /
`pyslurm.Job(id).cancel()`, `pyslurm.Nodes.load()`, `pyslurm.JobSubmitDescription(...).submit()`,
`pyslurm.db.Jobs.load(pyslurm.db.JobFilter(...))`. pyslurm is version-locked to the Slurm it compiles
against and PyPI carries only a few releases (25.11, not 22.5): a site builds it for its Slurm from
pyslurm's own source against libslurm-dev. `PyslurmClient.open()` refuses to start unless pyslurm imports and
its release matches `sinfo --version` (pyslurm "22.5.3" is Slurm 22.05). Importing pyslurm initialises
libslurm from `SLURM_CONF`, once per process: `open(slurm_conf=...)` sets it before the first import.

What pyslurm 22.5 does not give: a database job's GPUs (`pyslurm.db.Job` has no TRES there; later
releases have `gpus`), so accounting records from it carry `gpus=0` unless the release provides them.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Collection, Mapping
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

# `Job.resource_sharing` is slurm_job_share_string(): "NO" for --exclusive ("none"/"exclusive" elsewhere)
_EXCLUSIVE = frozenset({"NO", "NONE", "EXCLUSIVE"})


class PyslurmUnavailable(RuntimeError):
    """pyslurm does not import here, or was built for another Slurm release."""


def major_minor(version: str) -> tuple[int, int] | None:
    """(24, 5) from Slurm's '24.05.4', 'slurm 24.05.4' or pyslurm's '24.5.1' (PEP 440 drops the zero)."""
    match = re.search(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def site_slurm_version() -> str:
    """The site's Slurm release as `sinfo --version` prints it ('slurm-wlm 22.05.8' → '22.05.8')."""
    try:
        out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""
    return out.split()[-1] if out.split() else ""


def load_pyslurm(
    *, site_version: str | None = None, name: str = "pyslurm", slurm_conf: str | None = None
) -> ModuleType:
    """Import pyslurm and check it was built for this site's Slurm; raise PyslurmUnavailable if not."""
    site = site_slurm_version() if site_version is None else site_version
    if slurm_conf is not None:
        if sys.modules.get(name) is not None and os.environ.get("SLURM_CONF") != slurm_conf:
            # libslurm read its configuration at the first import: a second cluster cannot be opened
            raise PyslurmUnavailable(
                f"pyslurm already initialised with SLURM_CONF={os.environ.get('SLURM_CONF')}"
            )
        os.environ["SLURM_CONF"] = slurm_conf
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise PyslurmUnavailable(
            f"pyslurm not importable ({err}); build pyslurm for the site's Slurm {site or '?'}"
            " from its source (PyPI has no pyslurm for Slurm 22.05)"
        ) from None
    built = str(getattr(module, "__version__", ""))
    if major_minor(built) is None or major_minor(site) is None:
        raise PyslurmUnavailable(f"cannot compare pyslurm {built!r} with the site's Slurm {site!r}")
    if major_minor(built) != major_minor(site):
        raise PyslurmUnavailable(f"pyslurm {built} is built for another Slurm release than the site's {site}")
    return module


def _dt(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return epoch(value)


def _gpu_dict(value: Any) -> tuple[int, str | None]:
    """GPUs from pyslurm's maps: `gpus` ({'gpu:a100': GPU(count, type)}) or a GRES dict
    ({'gpu:a100': 2}, {'gpu': {'count': 2, 'indexes': '0-1'}}); a string is parsed as GRES."""
    if not isinstance(value, Mapping):
        return gres_gpus(str(value or ""))
    count, model = 0, None
    for key, item in value.items():
        name, _, typ = str(key).partition(":")
        if name != "gpu":
            continue
        if isinstance(item, Mapping):
            n = int(item.get("count") or 0)
        elif isinstance(item, int):
            n = item
        else:  # a pyslurm.db.GPU
            n = int(getattr(item, "count", 0) or 0)
            typ = typ or str(getattr(item, "type", "") or "")
        count += n
        model = typ or model
    return count, model


def _words(value: Any, sep: str = ",") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(sep) if v]
    return [str(v) for v in value]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


class PyslurmClient:
    """Calls pyslurm (a C extension, blocking) in worker threads."""

    name = "pyslurm"

    def __init__(self, module: ModuleType) -> None:
        self._m = module

    @classmethod
    def open(cls, *, slurm_conf: str | None = None) -> PyslurmClient:
        return cls(load_pyslurm(slurm_conf=slurm_conf))

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except self._m.RPCError as err:
            raise BackendError(BACKEND, f"pyslurm: {err}") from None

    def _job(self, j: Any) -> SlurmJob:
        # pyslurm 22.5 has GPUs only as `gres_per_node` ({'gpu': 1}, {'gpu:a100': 4}); later releases add
        # the job's total as `gpus`
        gpus, model = _gpu_dict(getattr(j, "gpus", None))
        per_node, node_model = _gpu_dict(j.gres_per_node)
        nodes = int(j.num_nodes or 1)
        array_id = _int(j.array_id)
        limit = j.time_limit
        return SlurmJob(
            job_id=str(j.id),
            name=str(j.name or ""),
            state=JobState.parse(str(j.state)),
            partition=str(j.partition or ""),
            comment=str(j.comment or ""),
            reason=None if j.state_reason in (None, "None") else str(j.state_reason),
            account=j.account,
            qos=j.qos,
            user=j.user_name,
            nodes=nodes,
            cpus=int(j.cpus or 1),
            memory_mb=j.memory,
            gpus=gpus or per_node * nodes,
            gpu_model=model or node_model,
            features=",".join(_words(j.constraints)),
            time_limit_minutes=int(limit) if isinstance(limit, int) else None,
            submit_time=_dt(j.submit_time),
            start_time=_dt(j.start_time),
            end_time=_dt(j.end_time),
            node_list=str(j.allocated_nodes or ""),
            priority=_int(j.priority),
            exclusive=str(j.resource_sharing or "").upper() in _EXCLUSIVE,
            gpus_per_node=per_node or None,
            array_job_id=str(array_id) if array_id else None,
            array_tasks=str(j.array_tasks_waiting or "") if array_id else "",
            array_max_tasks=_int(j.array_tasks_parallel),
        )

    async def submit(self, spec: JobSpec) -> str:
        desc: dict[str, Any] = {
            "name": spec.name,
            "script": spec.script,
            "partitions": spec.partition,
            "time_limit": str(spec.time_limit_minutes),  # sbatch's -t: minutes
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
            desc["constraints"] = spec.features
        if spec.hold:
            desc["priority"] = 0  # pyslurm documents priority 0 as sbatch's --hold
        if spec.time_min_minutes is not None:
            desc["time_limit_min"] = str(spec.time_min_minutes)  # --time-min
        if spec.deadline is not None:
            desc["deadline"] = int(spec.deadline.timestamp())  # --deadline; pyslurm takes a unix time
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
            # `Node.state` is the complete state: "IDLE+CLOUD+POWERED_DOWN"
            base, *flags = str(n.state or "UNKNOWN").split("+")
            gpus, model = _gpu_dict(n.configured_gres)
            out.append(
                SlurmNode(
                    name=str(n.name),
                    state=base.lower(),
                    flags=frozenset(f.upper() for f in flags if f),
                    cpus=_int(n.total_cpus),
                    alloc_cpus=_int(n.allocated_cpus),
                    memory_mb=_int(n.real_memory),
                    gpus=gpus,
                    gpu_model=model,
                    features=frozenset(_words(n.active_features)),
                    partitions=tuple(_words(n.partitions)),
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
        return [_record(j) for j in loaded.values()]

    async def close(self) -> None:
        return None


def _record(j: Any) -> AccountingRecord:
    """One `pyslurm.db.Job`; CPU time and peak RSS from its `stats` (`pyslurm.db.JobStatistics`)."""
    gpus, model = _gpu_dict(getattr(j, "gpus", None))  # not in pyslurm 22.5's db.Job
    cpu = j.stats.total_cpu_time  # seconds, user + system
    rss = j.stats.max_resident_memory  # bytes
    return AccountingRecord(
        job_id=str(j.id),
        name=str(j.name or ""),
        state=JobState.parse(str(j.state)),
        partition=str(j.partition or ""),
        account=j.account,
        user=j.user_name,
        submit_time=_dt(j.submit_time),
        start_time=_dt(j.start_time),
        end_time=_dt(j.end_time),
        elapsed_seconds=_int(j.elapsed_time),
        cpu_seconds=int(cpu) if isinstance(cpu, int | float) else None,
        nodes=int(j.num_nodes or 1),
        cpus=int(j.cpus or 1),
        memory_mb=j.memory,
        max_rss_kb=int(rss) // 1024 if isinstance(rss, int | float) and rss > 0 else None,
        gpus=gpus,
        gpu_model=model,
        qos=j.qos,
        comment=str(j.comment or ""),
        node_list=str(j.nodelist or ""),
        cluster=j.cluster,
    )

"""A stand-in for the `pyslurm` module that follows its documented API, for the client's tests without Slurm.

The names are pyslurm 22.5.3's (the release the real-cluster contract tests run against) plus what later
releases add and the client reads when present (`Job.gpus`, `db.Job.gpus` as {'gpu:<type>': GPU}).

Only what `PyslurmClient` uses, with pyslurm's names and value shapes: `Jobs.load()` and
`Nodes.load()` return maps with `.values()`; `Job` carries the documented attributes (times as
unix timestamps, memory in MiB, `gpus` as {'gpu:<type>': GPU}, `state` words, `state_reason`
"None" when there is none); `Node.state` is the complete state ("IDLE+CLOUD+POWERED_DOWN");
`JobSubmitDescription` accepts only documented attribute names (an unknown one is an error, as
in pyslurm's extension type) and `submit()` returns the new job id; `db.Jobs.load(JobFilter)`.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any


class RPCError(Exception):
    pass


@dataclass
class GPU:  # pyslurm.db.GPU
    count: int
    type: str | None = None


@dataclass
class Job:  # pyslurm.Job (the attributes the client reads)
    id: int
    name: str = ""
    state: str = "PENDING"
    state_reason: str = "None"
    partition: str = "debug"
    account: str | None = None
    qos: str | None = "normal"
    user_name: str | None = "root"
    comment: str | None = None
    num_nodes: int = 1
    cpus: int = 1
    memory: int | None = None  # MiB, the whole job
    gpus: dict[str, GPU] = field(default_factory=dict)
    gres_per_node: dict[str, int] = field(default_factory=dict)  # deprecated, still documented
    constraints: list[str] = field(default_factory=list)
    time_limit: int | None = None  # minutes
    submit_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    allocated_nodes: str | None = None
    priority: int = 0
    resource_sharing: str = "OK"
    array_id: int | None = None
    array_tasks_waiting: str | None = None
    array_tasks_parallel: int | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        job = QUEUE.get(self.id)
        if job is None:
            raise RPCError(f"Invalid job id specified: {self.id}")
        job.state = "CANCELLED"


@dataclass
class Node:  # pyslurm.Node
    name: str
    state: str = "IDLE"
    total_cpus: int = 8
    allocated_cpus: int = 0
    real_memory: int = 16000
    configured_gres: dict[str, int] = field(default_factory=dict)
    active_features: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    architecture: str | None = "x86_64"


class _Map(dict[int | str, Any]):
    """pyslurm's MultiClusterMap, as far as `.values()` goes."""


QUEUE: dict[int, Job] = {}
NODES: dict[str, Node] = {}
SUBMITTED: list[dict[str, Any]] = []


class Jobs:
    @staticmethod
    def load(preload_passwd_info: bool = False, frozen: bool = False) -> _Map:
        return _Map(QUEUE)


class Nodes:
    @staticmethod
    def load() -> _Map:
        return _Map(NODES)


_DOCUMENTED = frozenset(
    {
        "name", "account", "priority", "comment", "working_directory", "nodes", "constraints",
        "memory_per_cpu", "memory_per_node", "partitions", "qos", "is_requeueable", "script",
        "environment", "resource_sharing", "time_limit", "cpus_per_task", "gres_per_node",
        "ntasks", "standard_output", "standard_error", "deadline", "time_limit_min",
    }
)  # fmt: skip


class JobSubmitDescription:
    def __init__(self, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in _DOCUMENTED:
                raise AttributeError(f"'JobSubmitDescription' object has no attribute '{key}'")
        self.kwargs = kwargs

    def submit(self) -> int:
        job_id = max(QUEUE, default=100) + 1
        SUBMITTED.append(self.kwargs)
        QUEUE[job_id] = Job(id=job_id, name=str(self.kwargs.get("name", "")))
        return job_id


@dataclass
class JobStatistics:  # pyslurm.db.JobStatistics
    total_cpu_time: int | None = None
    max_resident_memory: int | None = None  # bytes


@dataclass
class DbJob:  # pyslurm.db.Job
    id: int
    name: str = ""
    state: str = "COMPLETED"
    partition: str = "debug"
    account: str | None = None
    user_name: str | None = "root"
    submit_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    elapsed_time: int = 0
    num_nodes: int = 1
    cpus: int = 1
    memory: int | None = None
    gpus: dict[str, GPU] = field(default_factory=dict)
    qos: str | None = "normal"
    comment: str | None = None
    nodelist: str | None = None
    cluster: str | None = "ci"
    stats: JobStatistics = field(default_factory=JobStatistics)


@dataclass
class JobFilter:  # pyslurm.db.JobFilter (documented fields the client sets)
    start_time: Any = None
    end_time: Any = None
    accounts: list[str] | None = None


HISTORY: list[DbJob] = []
FILTERS: list[JobFilter] = []


class DbJobs:
    @staticmethod
    def load(db_filter: JobFilter | None = None, db_connection: Any = None) -> _Map:
        FILTERS.append(db_filter or JobFilter())
        accounts = db_filter.accounts if db_filter else None
        return _Map({j.id: j for j in HISTORY if not accounts or j.account in accounts})


def module(version: str = "25.11.2") -> types.ModuleType:
    """A fresh stub `pyslurm` (empty queue, no nodes) claiming to be built for `version`."""
    QUEUE.clear()
    NODES.clear()
    SUBMITTED.clear()
    HISTORY.clear()
    FILTERS.clear()
    m = types.ModuleType("pyslurm")
    m.__version__ = version  # type: ignore[attr-defined]
    m.RPCError = RPCError  # type: ignore[attr-defined]
    m.Job, m.Jobs, m.Node, m.Nodes = Job, Jobs, Node, Nodes  # type: ignore[attr-defined]
    m.JobSubmitDescription = JobSubmitDescription  # type: ignore[attr-defined]
    db = types.ModuleType("pyslurm.db")
    db.Jobs, db.Job, db.JobFilter, db.JobStatistics = DbJobs, DbJob, JobFilter, JobStatistics  # type: ignore[attr-defined]
    db.GPU = GPU  # type: ignore[attr-defined]
    m.db = db  # type: ignore[attr-defined]
    return m

"""The one interface the broker uses to talk to Slurm, and the plain values it returns.

Three implementations sit behind `SlurmClient`: the Slurm commands with `--json` output
(`commands.py`), slurmrestd with JWT (`rest.py`) and pyslurm where it matches the site's Slurm
(`pyslurm_client.py`). Everything above this module (pilots, backfill, workload, usage) only
sees these dataclasses.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from backends.base import BackendError

BACKEND = "slurm"


class AccountingUnavailable(BackendError):
    """slurmdbd is not configured or not answering: `sacct` has nothing to say."""


class JobState(enum.StrEnum):
    """Slurm's base job states (flags such as REQUEUED or COMPLETING are not included here)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REQUEUED = "REQUEUED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str | None) -> JobState:
        """Slurm spells states in several ways ("CANCELLED by 0", "CA", "OUT_OF_ME+"): normalise them."""
        if not text:
            return cls.UNKNOWN
        word = text.split()[0].upper().rstrip("+")
        if word in cls.__members__:
            return cls[word]
        short = {
            "PD": cls.PENDING,
            "CF": cls.CONFIGURING,
            "R": cls.RUNNING,
            "CG": cls.COMPLETING,
            "S": cls.SUSPENDED,
            "CD": cls.COMPLETED,
            "CA": cls.CANCELLED,
            "F": cls.FAILED,
            "TO": cls.TIMEOUT,
            "NF": cls.NODE_FAIL,
            "PR": cls.PREEMPTED,
            "BF": cls.BOOT_FAIL,
            "DL": cls.DEADLINE,
            "OOM": cls.OUT_OF_MEMORY,
            "RQ": cls.REQUEUED,
        }
        if word in short:
            return short[word]
        for member in cls:
            if member.value.startswith(word):  # sacct truncates long names
                return member
        return cls.UNKNOWN

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {
        JobState.COMPLETED,
        JobState.CANCELLED,
        JobState.FAILED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.OUT_OF_MEMORY,
    }
)


def slurm_time(when: datetime, *, local: bool = False) -> str:
    """A time as Slurm's parsers read it (`YYYY-MM-DDTHH:MM:SS`, no zone): in UTC for commands run
    with TZ=UTC, or in this host's zone (`local`) for daemons that read it in theirs."""
    return (when.astimezone() if local else when.astimezone(UTC)).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A batch job to submit. Exactly one of `nodes` (whole, exclusive nodes) or `cores` (a slice)."""

    name: str
    script: str
    partition: str
    time_limit_minutes: int
    comment: str = ""
    account: str | None = None
    qos: str | None = None
    nodes: int | None = None
    cores: int | None = None
    memory_mb: int | None = None
    gpus: int = 0
    features: str = ""  # --constraint, e.g. "x86_64"
    hold: bool = False
    requeue: bool = False
    output: str = "/dev/null"
    workdir: str = "/tmp"
    # Slurm removes the job if it cannot end by `deadline` and, with `time_min_minutes`, lowers its
    # limit (not below that minimum) so that it ends by then: nothing runs past an allocation's end.
    deadline: datetime | None = None
    time_min_minutes: int | None = None

    def __post_init__(self) -> None:
        if (self.nodes is None) == (self.cores is None):
            raise ValueError(f"job {self.name}: give exactly one of nodes or cores")
        if (self.nodes or self.cores or 0) < 1:
            raise ValueError(f"job {self.name}: nodes/cores must be at least 1")
        if self.time_limit_minutes < 1:
            raise ValueError(f"job {self.name}: time_limit_minutes must be at least 1")
        if self.time_min_minutes is not None and not 1 <= self.time_min_minutes <= self.time_limit_minutes:
            raise ValueError(f"job {self.name}: time_min_minutes must be within 1..time_limit_minutes")
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise ValueError(f"job {self.name}: deadline must be timezone-aware")


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """A job as the controller sees it now (pending, running, or recently finished)."""

    job_id: str
    name: str
    state: JobState
    partition: str
    comment: str = ""
    reason: str | None = None  # pending/finish reason; None when Slurm says "None"
    account: str | None = None
    qos: str | None = None
    user: str | None = None
    nodes: int = 1
    cpus: int = 1
    memory_mb: int | None = None  # requested, per job
    gpus: int = 0
    gpu_model: str | None = None
    features: str = ""  # --constraint
    time_limit_minutes: int | None = None  # None: unlimited
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    node_list: str = ""
    priority: int = 0
    exclusive: bool = False  # --exclusive: whole nodes, whatever `cpus` says
    gpus_per_node: int | None = None  # --gres per node (`gpus` is the job's total); None: not per node
    array_job_id: str | None = None  # set on every record of an array job
    array_tasks: str = ""  # the tasks still pending in this record: '0-9:2,15%4' (Slurm's notation)
    array_max_tasks: int = 0  # the array's %N throttle (0: none)


@dataclass(frozen=True, slots=True)
class SlurmNode:
    name: str
    state: str  # base state, lower case: idle, mixed, allocated, down, drained, unknown...
    flags: frozenset[str]  # CLOUD, POWERED_DOWN, POWERING_UP, DRAIN, ...
    cpus: int
    alloc_cpus: int
    memory_mb: int
    gpus: int = 0
    gpu_model: str | None = None
    features: frozenset[str] = frozenset()
    partitions: tuple[str, ...] = ()
    arch: str | None = None

    @property
    def cloud(self) -> bool:
        return "CLOUD" in self.flags

    @property
    def powered_down(self) -> bool:
        return "POWERED_DOWN" in self.flags

    @property
    def idle(self) -> bool:
        """Up, schedulable and running nothing."""
        return self.state == "idle" and not (self.flags & {"DRAIN", "POWERED_DOWN", "POWERING_UP", "DOWN"})


@dataclass(frozen=True, slots=True)
class AccountingRecord:
    """One finished (or running) job from slurmdbd or the jobcomp log."""

    job_id: str
    name: str
    state: JobState
    partition: str
    account: str | None
    user: str | None
    submit_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    elapsed_seconds: int
    cpu_seconds: int | None  # user+system; None when the source does not know (jobcomp)
    nodes: int
    cpus: int
    memory_mb: int | None = None  # requested
    max_rss_kb: int | None = None
    gpus: int = 0
    gpu_model: str | None = None
    qos: str | None = None
    comment: str = ""
    node_list: str = ""
    cluster: str | None = None


@runtime_checkable
class SlurmClient(Protocol):
    """Everything the broker asks of Slurm. Implementations map failures to `backends.base` errors."""

    name: str  # "commands" | "rest" | "pyslurm"

    async def submit(self, spec: JobSpec) -> str:
        """Submit a batch job and return its id (not idempotent: see `submit_once`)."""
        ...

    async def jobs(self) -> list[SlurmJob]:
        """Every job the controller still knows (pending, running, finished within MinJobAge)."""
        ...

    async def job(self, job_id: str) -> SlurmJob | None:
        """One job, or None once the controller has forgotten it."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Cancel a job; unknown or already finished jobs are not an error."""
        ...

    async def nodes(self) -> list[SlurmNode]:
        """Every node with its state, shape and partitions."""
        ...

    async def accounting(
        self, *, since: datetime, accounts: Collection[str] | None = None
    ) -> list[AccountingRecord]:
        """Jobs from slurmdbd that ran since `since`; raises AccountingUnavailable without slurmdbd."""
        ...

    async def close(self) -> None: ...


def encode_comment(fields: Mapping[str, str]) -> str:
    """Tags as a job comment: `k=v;k=v`. Slurm keeps the comment verbatim (and in slurmdbd with
    AccountingStoreFlags=job_comment), so it carries our broker id, resource id and token."""
    for key, value in fields.items():
        for text in (key, value):
            if not text or any(c in text for c in ";= \t\n\"'"):
                raise ValueError(f"job comment field {key!r}={value!r}: empty or contains ; = quote or space")
    return ";".join(f"{k}={v}" for k, v in fields.items())


def decode_comment(comment: str) -> dict[str, str]:
    """The tags of a comment written by `encode_comment`; foreign comments give {}."""
    fields: dict[str, str] = {}
    for part in comment.split(";"):
        key, sep, value = part.partition("=")
        if sep and key:
            fields[key] = value
    return fields


def token_in(comment: str, token: str) -> bool:
    """Whether a job comment carries this idempotency token."""
    return decode_comment(comment).get("token") == token


async def submit_once(client: SlurmClient, spec: JobSpec, token: str) -> SlurmJob:
    """Submit unless a job carrying `token` in its comment exists already; return that job either way.

    The comment must contain `token=<token>` as one `;`-separated field. A crash between sbatch
    and recording the job id therefore never doubles a pilot: the retry finds the first one.
    """
    if not token_in(spec.comment, token):
        raise ValueError(f"job {spec.name}: comment does not carry token={token}")
    for job in await client.jobs():
        if token_in(job.comment, token):
            return job
    job_id = await client.submit(spec)
    submitted = await client.job(job_id)
    if submitted is None:  # purged already: only possible with a tiny MinJobAge
        return SlurmJob(job_id=job_id, name=spec.name, state=JobState.UNKNOWN, partition=spec.partition)
    return submitted

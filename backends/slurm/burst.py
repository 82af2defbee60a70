"""Cloud bursting for Slurm power saving: what slurmctld's ResumeProgram/SuspendProgram call.

`resume` turns each CLOUD node slurmctld wants into a demand of the node's shape and hands it to a
placer (the broker's, `provisioner.slurm_power`, provisions one resource per node; `choose_only`
just picks the cheapest fitting offering). In fake-cloud mode (test cluster) a node whose resource
is up gets its own slurmd on this host so the job runs; `suspend` releases and stops it again.
One node's failure never stops the others, and both stay fast: slurmctld waits on them.
"""

from __future__ import annotations

import enum
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import structlog

from backends.slurm.client import JobState, SlurmClient, SlurmJob, SlurmNode
from backends.slurm.hostlist import expand_hostlist
from provisioner.domain import SLURM_NODE_GROUP_PREFIX, Arch, DemandGroup, Offering

log = structlog.get_logger(__name__)

NODE_GROUP_PREFIX = SLURM_NODE_GROUP_PREFIX  # the planner leaves these groups' units to Slurm
TAG_SLURM_NODE = "provisioner-slurm-node"  # on the resource: which Slurm node it is
DEFAULT_EXPERIMENT = "slurm-cloud"  # for a node in no partition and no configured account

OfferingChooser = Callable[[DemandGroup], Offering | None]
NodeAction = Callable[[str], Awaitable[None]]

_ARCH_FEATURES = {"x86_64": Arch.X86_64, "amd64": Arch.X86_64, "aarch64": Arch.ARM64, "arm64": Arch.ARM64}


def node_group_id(node: str) -> str:
    return f"{NODE_GROUP_PREFIX}{node}"


def node_of_group(group_id: str | None) -> str | None:
    """The Slurm node a demand group stands for, or None for any other group."""
    if group_id is None or not group_id.startswith(NODE_GROUP_PREFIX):
        return None
    return group_id[len(NODE_GROUP_PREFIX) :] or None


def node_demand(
    node: SlurmNode, *, experiment: str | None = None, walltime_hours: float = 1.0
) -> DemandGroup:
    """The capacity one CLOUD node stands for, as a one-job demand group of the node's shape.

    It is charged to `experiment`, else to the node's (first) partition.
    """
    archs = frozenset(_ARCH_FEATURES[f.lower()] for f in node.features if f.lower() in _ARCH_FEATURES)
    if not archs and node.arch and node.arch.lower() in _ARCH_FEATURES:
        archs = frozenset({_ARCH_FEATURES[node.arch.lower()]})
    return DemandGroup(
        id=node_group_id(node.name),
        experiment=experiment or (node.partitions[0] if node.partitions else DEFAULT_EXPERIMENT),
        jobs=1,
        cores_per_job=node.cpus,
        memory_gb_per_job=node.memory_mb / 1024,
        walltime_hours=walltime_hours,
        archs=archs or frozenset({Arch.X86_64}),
        gpus_per_job=node.gpus,
        gpu_model=node.gpu_model,
        source="slurm-resume",
    )


def cheapest_offering(offerings: Iterable[Offering]) -> OfferingChooser:
    """A chooser: the cheapest offering with enough cores, memory and GPUs of an allowed architecture."""
    catalog = list(offerings)

    def choose(demand: DemandGroup) -> Offering | None:
        return min(
            (o for o in catalog if fits(o, demand)), key=lambda o: (o.price_per_hour, o.id), default=None
        )

    return choose


def fits(o: Offering, demand: DemandGroup) -> bool:
    """One unit of the offering holds one job of the demand: cores, memory, architecture, GPUs."""
    return (
        o.cores >= demand.cores_per_job
        and o.memory_gb >= demand.memory_gb_per_job
        and o.arch in demand.archs
        and o.gpu_count >= demand.gpus_per_job
        and (
            demand.gpu_model is None
            or demand.gpus_per_job == 0
            or (o.gpu_model or "").casefold() == demand.gpu_model.casefold()
        )
    )


class Placement(enum.StrEnum):
    """What became of one node slurmctld asked for."""

    CREATED = "created"  # a new resource, accepted by its backend
    ALREADY_LIVE = "already_live"  # resume called again: the node's resource exists, no second one
    PENDING = "pending"  # intent recorded, the backend call is retried with the same token
    CHOSEN = "chosen"  # offering chosen, nothing provisioned (choose_only)
    NO_OFFERING = "no_offering"  # no usable offering fits the node's shape
    REFUSED = "refused"  # the policy refuses it (budget, spend cap, backend/market/arch not allowed)
    FAILED = "failed"  # every offering tried refused, or an error


@dataclass(frozen=True, slots=True)
class ResumeIntent:
    node: str
    demand: DemandGroup
    offering_id: str | None
    price_per_hour: Decimal | None
    placement: Placement = Placement.CHOSEN
    resource_id: str | None = None
    reason: str = ""

    @property
    def up(self) -> bool:
        """A resource stands behind the node (so, with a fake cloud, its slurmd may start)."""
        return self.placement in (Placement.CREATED, Placement.ALREADY_LIVE)


PlaceNode = Callable[[SlurmNode, DemandGroup], Awaitable[ResumeIntent]]
ReleaseNode = Callable[[str], Awaitable[object]]
MarkDown = Callable[[str, str], Awaitable[None]]  # (node, reason): Slurm shows the reason on the node
ChargeTo = Callable[[str | None, str | None], str]  # (account, partition) of the node's job -> experiment
NOT_UP = frozenset({Placement.REFUSED, Placement.NO_OFFERING, Placement.FAILED})


def node_accounts(jobs: Iterable[SlurmJob]) -> dict[str, tuple[str | None, str]]:
    """(account, partition) of the job each node was resumed for: jobs being configured on it, or
    allocated to it already. A node several jobs share is charged to the first job's account."""
    out: dict[str, tuple[str | None, str]] = {}
    for job in jobs:
        if job.state not in (JobState.CONFIGURING, JobState.RUNNING, JobState.PENDING) or not job.node_list:
            continue
        for node in expand_hostlist(job.node_list):
            out.setdefault(node, (job.account, job.partition))
    return out


def choose_only(choose: OfferingChooser) -> PlaceNode:
    """A placer that picks the offering and provisions nothing (dry run, and tests of the mapping)."""

    async def place(node: SlurmNode, demand: DemandGroup) -> ResumeIntent:
        offering = choose(demand)
        if offering is None:
            return ResumeIntent(node.name, demand, None, None, Placement.NO_OFFERING, reason="nothing fits")
        return ResumeIntent(node.name, demand, offering.id, offering.price_per_hour, Placement.CHOSEN)

    return place


async def resume(
    names: Sequence[str],
    client: SlurmClient,
    place: PlaceNode,
    *,
    experiment: str | None = None,
    charge_to: ChargeTo | None = None,
    start_node: NodeAction | None = None,
    mark_down: MarkDown | None = None,
) -> list[ResumeIntent]:
    """Map the nodes to demand and place each; (fake cloud) start the nodes whose resource is up.

    Each node is charged to `experiment` if given, else to `charge_to(account, partition)` of the job
    Slurm resumes it for, else to its partition. A node that gets no resource (refused by the policy,
    nothing fits, every offering failed) is set DOWN through `mark_down` with the reason, so the
    operator reads it in `scontrol show node` and Slurm requeues the job instead of waiting."""
    wanted = set(names)
    shapes = {n.name: n for n in await client.nodes() if n.name in wanted}
    accounts = node_accounts(await client.jobs()) if experiment is None and charge_to is not None else {}
    intents = []
    for name in names:
        node = shapes.get(name)
        if node is None:
            log.warning("slurm.resume.unknown_node", node=name)
            continue
        charged = experiment
        if charged is None and charge_to is not None and name in accounts:
            charged = charge_to(*accounts[name])
        demand = node_demand(node, experiment=charged)
        try:
            intent = await place(node, demand)
        except Exception as exc:  # one node's failure must not keep the other nodes down
            log.error("slurm.resume.failed", node=name, error_type=type(exc).__name__, error=str(exc))
            intent = ResumeIntent(name, demand, None, None, Placement.FAILED, reason=type(exc).__name__)
        log.info(
            "slurm.resume.intent",
            node=name,
            experiment=demand.experiment,
            cores=demand.cores_per_job,
            memory_gb=round(demand.memory_gb_per_job, 2),
            gpus=demand.gpus_per_job,
            archs=sorted(a.value for a in demand.archs),
            offering=intent.offering_id,
            price_per_hour=str(intent.price_per_hour) if intent.price_per_hour is not None else None,
            placement=str(intent.placement),
            resource=intent.resource_id,
            reason=intent.reason or None,
        )
        intents.append(intent)
        if mark_down is not None and intent.placement in NOT_UP:
            try:
                await mark_down(name, f"provisioner: {intent.placement}: {intent.reason or 'no resource'}")
            except Exception as exc:
                log.error("slurm.resume.mark_down_failed", node=name, error=str(exc))
        if start_node is not None and intent.up:
            try:
                await start_node(name)
            except Exception as exc:
                log.error("slurm.resume.start_failed", node=name, error=str(exc))
    return intents


async def suspend(
    names: Sequence[str], *, release: ReleaseNode | None = None, stop_node: NodeAction | None = None
) -> None:
    """Release the nodes slurmctld powers down; one node's failure never stops the others."""
    for name in names:
        log.info("slurm.suspend.release", node=name)
        if release is not None:
            try:
                await release(name)
            except Exception as exc:
                log.error("slurm.suspend.failed", node=name, error_type=type(exc).__name__, error=str(exc))
        if stop_node is not None:
            try:
                await stop_node(name)
            except Exception as exc:
                log.error("slurm.suspend.stop_failed", node=name, error=str(exc))


def _clear_signal_mask() -> None:
    # slurmctld runs ResumeProgram with SIGTERM etc. blocked; a slurmd inheriting that ignores SIGTERM
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class FakeCloudNodes:
    """Starts/stops a real `slurmd -N <node>` on this host per CLOUD node (the test cluster's cloud)."""

    def __init__(
        self, base_dir: Path, *, slurm_conf: Path | None = None, slurmd: str = "/usr/sbin/slurmd"
    ) -> None:
        self._base = base_dir
        self._conf = slurm_conf or base_dir / "etc" / "slurm.conf"
        self._slurmd = slurmd

    def _pidfile(self, node: str) -> Path:
        return self._base / "run" / f"slurmd-{node}.pid"

    def running(self, node: str) -> int | None:
        """The pid of the node's slurmd, if one runs."""
        try:
            pid = int(self._pidfile(node).read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # else a stale pid file: the number now belongs to another process, maybe another slurmd
        ours = comm == "slurmd" and any(
            a == b"-N" and b == node.encode() for a, b in itertools.pairwise(argv)
        )
        return pid if ours else None

    async def start(self, node: str) -> None:
        if self.running(node) is not None:
            return  # resume called twice: one slurmd per node
        (self._base / "state" / "d" / node).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SLURM_CONF": str(self._conf)}
        env.pop("SLURM_JWT", None)
        # -b: report "just booted", else slurmctld keeps waiting for a reboot; slurmd daemonizes
        subprocess.run(
            [self._slurmd, "-b", "-N", node],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_clear_signal_mask,
            check=False,
            timeout=20,
        )
        log.info("slurm.fake_cloud.started", node=node)

    async def stop(self, node: str) -> None:
        pidfile = self._pidfile(node)
        pid = self.running(node)
        if pid is None:
            pidfile.unlink(missing_ok=True)
            return
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pidfile.unlink(missing_ok=True)
        log.info("slurm.fake_cloud.stopped", node=node)

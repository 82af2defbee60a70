"""Cloud bursting for Slurm power saving: what slurmctld's ResumeProgram/SuspendProgram call.

`resume` turns each CLOUD node slurmctld wants into a demand of the node's shape, picks the cheapest
matching offering through the chooser it is given, and records the intent (a log event for now).
In fake-cloud mode (test cluster) it starts the node's own slurmd on this host so the job runs;
`suspend` stops it again. Both must stay fast: slurmctld waits on them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import structlog

from backends.slurm.client import SlurmClient, SlurmNode
from provisioner.domain import Arch, DemandGroup, Offering

log = structlog.get_logger(__name__)

OfferingChooser = Callable[[DemandGroup], Offering | None]
NodeAction = Callable[[str], Awaitable[None]]

_ARCH_FEATURES = {"x86_64": Arch.X86_64, "amd64": Arch.X86_64, "aarch64": Arch.ARM64, "arm64": Arch.ARM64}


def node_demand(node: SlurmNode, *, walltime_hours: float = 1.0) -> DemandGroup:
    """The capacity one CLOUD node stands for, as a one-job demand group of the node's shape."""
    archs = frozenset(_ARCH_FEATURES[f.lower()] for f in node.features if f.lower() in _ARCH_FEATURES)
    if not archs and node.arch and node.arch.lower() in _ARCH_FEATURES:
        archs = frozenset({_ARCH_FEATURES[node.arch.lower()]})
    return DemandGroup(
        id=f"slurm-node:{node.name}",
        experiment="slurm-cloud",
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
        fits = [
            o
            for o in catalog
            if o.cores >= demand.cores_per_job
            and o.memory_gb >= demand.memory_gb_per_job
            and o.arch in demand.archs
            and o.gpu_count >= demand.gpus_per_job
            and (demand.gpu_model is None or demand.gpus_per_job == 0 or o.gpu_model == demand.gpu_model)
        ]
        return min(fits, key=lambda o: (o.price_per_hour, o.id), default=None)

    return choose


@dataclass(frozen=True, slots=True)
class ResumeIntent:
    node: str
    demand: DemandGroup
    offering_id: str | None
    price_per_hour: Decimal | None


async def resume(
    names: Sequence[str],
    client: SlurmClient,
    choose: OfferingChooser,
    *,
    start_node: NodeAction | None = None,
) -> list[ResumeIntent]:
    """Map the nodes to demand, choose offerings, record the intents and (fake cloud) start the nodes."""
    wanted = set(names)
    shapes = {n.name: n for n in await client.nodes() if n.name in wanted}
    intents = []
    for name in names:
        node = shapes.get(name)
        if node is None:
            log.warning("slurm.resume.unknown_node", node=name)
            continue
        demand = node_demand(node)
        offering = choose(demand)
        intent = ResumeIntent(
            node=name,
            demand=demand,
            offering_id=offering.id if offering else None,
            price_per_hour=offering.price_per_hour if offering else None,
        )
        log.info(
            "slurm.resume.intent",
            node=name,
            cores=demand.cores_per_job,
            memory_gb=round(demand.memory_gb_per_job, 2),
            gpus=demand.gpus_per_job,
            archs=sorted(a.value for a in demand.archs),
            offering=intent.offering_id,
            price_per_hour=str(intent.price_per_hour) if intent.price_per_hour is not None else None,
        )
        intents.append(intent)
        if start_node is not None:
            await start_node(name)
    return intents


async def suspend(names: Sequence[str], *, stop_node: NodeAction | None = None) -> None:
    """Release the nodes slurmctld powers down."""
    for name in names:
        log.info("slurm.suspend.release", node=name)
        if stop_node is not None:
            await stop_node(name)


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

    async def start(self, node: str) -> None:
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
        try:
            pid = int(pidfile.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            pidfile.unlink(missing_ok=True)
            return
        if comm != "slurmd":  # stale pid file, the number now belongs to someone else
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

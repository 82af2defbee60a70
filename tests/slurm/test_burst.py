"""Cloud bursting through Slurm power saving: a job in `cloud` makes slurmctld call `provisioner slurm resume`."""

from __future__ import annotations

import asyncio
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from backends.base import TAG_GROUP
from backends.simulated import SimulatedCloud
from backends.slurm.burst import (
    TAG_SLURM_NODE,
    Placement,
    ResumeIntent,
    cheapest_offering,
    choose_only,
    node_demand,
    resume,
    suspend,
)
from backends.slurm.client import JobSpec, JobState, SlurmNode
from backends.slurm.commands import CommandsClient
from backends.slurm.hostlist import expand_hostlist
from provisioner.broker import build_broker
from provisioner.clock import SystemClock
from provisioner.domain import LIVE_STATES, Arch, DemandGroup, Market, Offering, ResourceState
from provisioner.model import ResourceRow
from provisioner.settings import Settings
from provisioner.slurm_power import CLOUD_MARKETS, simulated_state_dir
from tests.slurm.conftest import NODE, SLURM_CONF, eventually

pytestmark = pytest.mark.slurm


def offering(
    name: str, cores: int, memory_gb: float, price: str, arch: Arch = Arch.X86_64, gpus: int = 0
) -> Offering:
    return Offering(
        id=f"aws:eu-west-1:{name}:spot", backend="aws", provider="aws", region="eu-west-1", instance_type=name,
        family=f"aws:{name}", market=Market.SPOT, cores=cores, memory_gb=memory_gb, arch=arch,
        price_per_hour=Decimal(price), hs23_per_core=10.0, gpu_count=gpus,
    )  # fmt: skip


CATALOG = [
    offering("t4g.xlarge", 4, 16, "0.05", Arch.ARM64),  # cheapest, wrong architecture
    offering("c7i.large", 2, 4, "0.035"),  # too small
    offering("c7i.xlarge", 4, 8, "0.0712"),
    offering("m7i.xlarge", 4, 16, "0.21"),
]


async def power_down(commands: CommandsClient, node: str) -> None:
    await commands.run(["scontrol", "update", f"nodename={node}", "state=POWER_DOWN"])


async def test_resume_maps_each_node_shape_to_the_cheapest_fitting_offering(commands: CommandsClient) -> None:
    intents = await resume(["cloud2", NODE, "nosuchnode"], commands, choose_only(cheapest_offering(CATALOG)))
    by_node = {i.node: i for i in intents}
    assert set(by_node) == {"cloud2", NODE}
    cloud = by_node["cloud2"]
    assert (cloud.demand.cores_per_job, cloud.demand.archs) == (4, frozenset({Arch.X86_64}))
    assert cloud.demand.experiment == "cloud"  # charged to the node's partition
    assert cloud.offering_id == "aws:eu-west-1:c7i.xlarge:spot" and cloud.price_per_hour == Decimal("0.0712")
    assert by_node[NODE].demand.gpus_per_job == 2  # nobody sells 2 GPUs here
    assert by_node[NODE].offering_id is None and by_node[NODE].placement is Placement.NO_OFFERING


async def test_one_failing_node_does_not_stop_the_others(commands: CommandsClient) -> None:
    started: list[str] = []

    async def place(node: SlurmNode, demand: DemandGroup) -> ResumeIntent:
        if node.name == "cloud1":
            raise RuntimeError("database is locked")
        return ResumeIntent(node.name, demand, "o", Decimal(1), Placement.CREATED, resource_id="r-1")

    async def start(name: str) -> None:
        started.append(name)

    intents = await resume(["cloud1", "cloud2"], commands, place, experiment="atlas", start_node=start)
    assert [(i.node, i.placement) for i in intents] == [
        ("cloud1", Placement.FAILED),
        ("cloud2", Placement.CREATED),
    ]
    assert started == ["cloud2"] and intents[1].demand.experiment == "atlas"

    released: list[str] = []

    async def release(name: str) -> None:
        if name == "cloud1":
            raise RuntimeError("backend down")
        released.append(name)

    await suspend(["cloud1", "cloud2"], release=release)
    assert released == ["cloud2"]


async def test_hostlists_expand_like_scontrol(commands: CommandsClient) -> None:
    for expr in ("cloud[1-3]", "cloud[1,3-4],vm", "n[01-03,10]", "a[1-2]b[3-4]"):
        assert expand_hostlist(expr) == await commands.hostnames(expr), expr


def _node_pidfile(cluster: Path, node: str) -> Path:
    return cluster / "run" / f"slurmd-{node}.pid"


BROKER_DIR = "broker"  # the wrappers' PROVISIONER_STATE_DIR under the cluster directory


def node_rows(cluster: Path, node: str) -> list[ResourceRow]:
    """The resources the resume program recorded for `node` in the wrappers' broker database."""
    settings = Settings(state_dir=cluster / BROKER_DIR)
    broker = build_broker(settings, simulated_state_dir=simulated_state_dir(settings))
    return [r for r in broker.store.resources() if r.group_id == f"slurm-node:{node}"]


def simulated_units(cluster: Path, backend: str) -> list[dict[str, str]]:
    """Tags of the live units in the wrappers' simulated backend `backend` (read from its state file)."""
    sim = SimulatedCloud(
        backend, [], SystemClock(), state_file=cluster / BROKER_DIR / "simulated" / f"{backend}.json"
    )
    return [dict(u.tags) for u in sim.live_units()]


async def test_cloud_job_resumes_a_node_through_the_broker_runs_and_suspend_releases_it(
    commands: CommandsClient, slurm_cluster: Path, tag: str, cleanup: list[str]
) -> None:
    async def all_powered_down() -> bool:
        return all(n.powered_down for n in await commands.nodes() if n.cloud)

    for n in await commands.nodes():  # nodes left up by an earlier test would run the job without resume
        if n.cloud and not n.powered_down and "POWERING_DOWN" not in n.flags:
            await power_down(commands, n.name)
    await eventually(all_powered_down, timeout=90, what="every cloud node to be powered down")

    power_log = slurm_cluster / "log" / "power.log"
    before = power_log.stat().st_size
    job_id = await commands.submit(
        JobSpec(
            name=f"burst.{tag}",
            script="#!/bin/bash\nsleep 1\n",
            partition="cloud",
            time_limit_minutes=2,
            cores=1,
            account="atlas",  # the policy fails closed: only an experiment it names gets a node
        )
    )
    cleanup.append(job_id)

    async def completed() -> bool:
        # a resume the broker aborted (no policy, a bad backends file) fails now, naming why, not at the timeout
        aborted = [line for line in power_log.read_text()[before:].splitlines() if "slurm.resume.aborted" in line]
        assert not aborted, aborted
        job = await commands.job(job_id)
        return job is not None and job.state is JobState.COMPLETED

    await eventually(completed, timeout=120, interval=1, what="the cloud job to resume a node and complete")
    job = await commands.job(job_id)
    assert job is not None and job.node_list.startswith("cloud")
    node = job.node_list
    log = power_log.read_text()[before:]
    assert f"RESUME {node}" in log and "slurm.resume.intent" in log and "placement=created" in log
    assert _node_pidfile(slurm_cluster, node).exists()

    # exactly one live resource for the node, on the cheapest fitting simulated cloud offering
    live = [r for r in node_rows(slurm_cluster, node) if ResourceState(r.state) in LIVE_STATES]
    assert len(live) == 1, [(r.id, r.state) for r in live]
    row = live[0]
    assert row.experiment == "atlas" and row.market in {str(m) for m in CLOUD_MARKETS}  # the job's account
    assert f"offering={row.offering_id}" in log and f"resource={row.id}" in log
    settings = Settings(state_dir=slurm_cluster / BROKER_DIR)
    broker = build_broker(settings, simulated_state_dir=simulated_state_dir(settings))
    shape = next(n for n in await commands.nodes() if n.name == node)
    # the planner's choice for the node's shape: no fitting offering is cheaper per HS23-hour than it
    # (the cheapest per hour is one of the candidates it beat or matched)
    demand = node_demand(shape)
    by_hour = cheapest_offering(o for o in broker.offerings.values() if o.market in CLOUD_MARKETS)(demand)
    chosen = broker.offerings[row.offering_id]
    assert by_hour is not None and chosen.market in CLOUD_MARKETS
    assert chosen.cores >= demand.cores_per_job and chosen.memory_gb >= demand.memory_gb_per_job
    assert chosen.price_per_hour / Decimal(chosen.hs23) <= by_hour.price_per_hour / Decimal(by_hour.hs23)
    units = [t for t in simulated_units(slurm_cluster, row.backend) if t.get(TAG_SLURM_NODE) == node]
    assert len(units) == 1 and units[0][TAG_GROUP] == f"slurm-node:{node}"

    await power_down(commands, node)

    async def released() -> bool:
        return (
            f"SUSPEND {node}" in power_log.read_text()[before:]
            and not _node_pidfile(slurm_cluster, node).exists()
        )

    await eventually(released, timeout=60, what=f"SuspendProgram to stop {node}")
    await eventually(all_powered_down, timeout=90, what=f"{node} to be powered down")
    after = next(r for r in node_rows(slurm_cluster, node) if r.id == row.id)
    assert after.state == ResourceState.RELEASED
    assert not [r for r in node_rows(slurm_cluster, node) if ResourceState(r.state) in LIVE_STATES]
    assert not [t for t in simulated_units(slurm_cluster, row.backend) if t.get(TAG_SLURM_NODE) == node]
    # the slurmd the resume started is really gone
    await asyncio.sleep(0.5)
    ps = subprocess.run(["pgrep", "-f", f"slurmd -b -N {node}$"], capture_output=True, text=True, check=False)
    assert ps.stdout.strip() == ""
    assert SLURM_CONF.exists()


def test_node_demand_reads_architecture_from_features() -> None:
    from backends.slurm.client import SlurmNode

    arm = SlurmNode(
        name="a1", state="idle", flags=frozenset({"CLOUD"}), cpus=64, alloc_cpus=0, memory_mb=256000,
        features=frozenset({"cloud", "aarch64"}),
    )  # fmt: skip
    demand = node_demand(arm)
    assert demand.archs == frozenset({Arch.ARM64}) and demand.memory_gb_per_job == 250.0
    assert cheapest_offering(CATALOG)(demand) is None  # no 64-core ARM offering

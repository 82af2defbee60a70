"""Cloud bursting through Slurm power saving: a job in `cloud` makes slurmctld call `provisioner slurm resume`."""

from __future__ import annotations

import asyncio
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from backends.slurm.burst import cheapest_offering, node_demand, resume
from backends.slurm.client import JobSpec, JobState
from backends.slurm.commands import CommandsClient
from backends.slurm.hostlist import expand_hostlist
from provisioner.domain import Arch, Market, Offering
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
    intents = await resume(["cloud2", NODE, "nosuchnode"], commands, cheapest_offering(CATALOG))
    by_node = {i.node: i for i in intents}
    assert set(by_node) == {"cloud2", NODE}
    cloud = by_node["cloud2"]
    assert (cloud.demand.cores_per_job, cloud.demand.archs) == (4, frozenset({Arch.X86_64}))
    assert cloud.offering_id == "aws:eu-west-1:c7i.xlarge:spot" and cloud.price_per_hour == Decimal("0.0712")
    assert (
        by_node[NODE].demand.gpus_per_job == 2 and by_node[NODE].offering_id is None
    )  # nobody sells 2 GPUs here


async def test_hostlists_expand_like_scontrol(commands: CommandsClient) -> None:
    for expr in ("cloud[1-3]", "cloud[1,3-4],vm", "n[01-03,10]", "a[1-2]b[3-4]"):
        assert expand_hostlist(expr) == await commands.hostnames(expr), expr


def _node_pidfile(cluster: Path, node: str) -> Path:
    return cluster / "run" / f"slurmd-{node}.pid"


async def test_cloud_job_resumes_a_node_through_the_cli_runs_and_suspend_releases_it(
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
        )
    )
    cleanup.append(job_id)

    async def completed() -> bool:
        job = await commands.job(job_id)
        return job is not None and job.state is JobState.COMPLETED

    await eventually(completed, timeout=120, interval=1, what="the cloud job to resume a node and complete")
    job = await commands.job(job_id)
    assert job is not None and job.node_list.startswith("cloud")
    node = job.node_list
    log = power_log.read_text()[before:]
    assert f"RESUME {node}" in log
    assert "slurm.resume.intent" in log and "offering=aws:eu-west-1:c7i.xlarge:spot" in log
    assert _node_pidfile(slurm_cluster, node).exists()

    await power_down(commands, node)

    async def released() -> bool:
        return (
            f"SUSPEND {node}" in power_log.read_text()[before:]
            and not _node_pidfile(slurm_cluster, node).exists()
        )

    await eventually(released, timeout=60, what=f"SuspendProgram to stop {node}")
    await eventually(all_powered_down, timeout=90, what=f"{node} to be powered down")
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

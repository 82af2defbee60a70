"""The Slurm queue as demand: pending jobs become PendingJobs with cores, memory, GPUs and walltime."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backends.slurm.client import JobSpec, JobState, SlurmClient
from backends.slurm.commands import CommandsClient
from provisioner.domain import Arch
from provisioner.sources.base import WorkloadSource
from provisioner.sources.slurm import SlurmWorkloadSource, job_archs
from tests.slurm.conftest import NODE, SLURM_CONF, eventually, node_free

pytestmark = pytest.mark.slurm

SLEEP = "#!/bin/bash\nsleep 300\n"


def job(name: str, **kw: object) -> JobSpec:
    base: dict[str, object] = {
        "name": name,
        "script": SLEEP,
        "partition": "debug",
        "time_limit_minutes": 30,
        "cores": 1,
    }
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


async def test_pending_jobs_become_demand_with_gpus_memory_walltime_and_partition(
    client: SlurmClient, commands: CommandsClient, tag: str, cleanup: list[str], slurmdbd: bool
) -> None:
    await eventually(lambda: node_free(commands), what=f"{NODE} to be idle")
    # the owner takes every core and GPU, so everything after it really waits for capacity
    blocker = await commands.submit(job(f"blocker.{tag}", partition="owner", cores=8, gpus=2, account="dune"))
    cleanup.append(blocker)

    async def blocker_runs() -> bool:
        b = await commands.job(blocker)
        return b is not None and b.state is JobState.RUNNING

    await eventually(blocker_runs, what="the blocker to run")
    gpu_job = await commands.submit(
        job(f"gpu.{tag}", account="atlas", cores=2, memory_mb=1024, gpus=1, features="x86_64")
    )
    long_job = await commands.submit(job(f"long.{tag}", account="lsst", time_limit_minutes=90))
    backfill_job = await commands.submit(job(f"bf.{tag}", account="cms", partition="scavenger"))
    held = await commands.submit(job(f"held.{tag}", account="atlas", hold=True))
    pilot = await commands.submit(job(f"prv.pilot.{tag}", account="atlas"))
    cleanup += [gpu_job, long_job, backfill_job, held, pilot]

    async def evaluated() -> bool:
        j = await commands.job(gpu_job)
        return j is not None and j.reason is not None

    await eventually(evaluated, what="the scheduler to give a pending reason")
    source = SlurmWorkloadSource(client, accounts=["atlas", "lsst", "cms"])
    assert isinstance(source, WorkloadSource)
    pending = {p.job_id: p for p in await source.pending()}
    assert set(pending) == {gpu_job, long_job, backfill_job}  # not held, not our pilot, not dune

    gpu = pending[gpu_job]
    assert (gpu.experiment, gpu.cores, gpu.memory_gb, gpu.gpus, gpu.walltime_hours) == (
        "atlas",
        2,
        1.0,
        1,
        0.5,
    )
    assert gpu.archs == frozenset({Arch.X86_64}) and gpu.partition == "debug" and not gpu.preemptible
    assert gpu.reason in {"Resources", "Priority"}
    assert pending[long_job].walltime_hours == 1.5 and pending[long_job].qos == (
        "normal" if slurmdbd else None
    )
    assert pending[backfill_job].preemptible and pending[backfill_job].partition == "scavenger"

    only_debug = SlurmWorkloadSource(client, partitions=["debug"], accounts=["atlas", "lsst", "cms"])
    assert {p.job_id for p in await only_debug.pending()} == {gpu_job, long_job}

    # the CLI shows the same queue as demand
    out = subprocess.run(
        [sys.executable, "-c", "from provisioner.cli import main; main()", "slurm", "pending", "--json",
         "--account", "atlas", "--account", "lsst", "--account", "cms"],
        capture_output=True, text=True, check=True, timeout=60, env={**os.environ, "SLURM_CONF": str(SLURM_CONF)},
    )  # fmt: skip
    assert {j["job_id"] for j in json.loads(out.stdout)} == {gpu_job, long_job, backfill_job}


def test_job_constraints_give_the_accepted_architectures() -> None:
    assert job_archs("") == frozenset({Arch.X86_64})
    assert job_archs("aarch64") == frozenset({Arch.ARM64})
    assert job_archs("x86_64|arm64") == frozenset({Arch.X86_64, Arch.ARM64})
    assert job_archs("[arm64&gpu]") == frozenset({Arch.ARM64})

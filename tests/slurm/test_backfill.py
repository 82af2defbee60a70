"""SlurmBackfillBackend on the real cluster: fill idle cores, get preempted by owner work, evacuate."""

from __future__ import annotations

from decimal import Decimal

import pytest

from backends.base import ProviderState, ProvisionRequest
from backends.slurm.backfill import SlurmBackfillBackend
from backends.slurm.client import JobSpec, JobState
from backends.slurm.commands import CommandsClient
from provisioner.domain import Arch, Market, Offering
from tests.slurm.conftest import NODE, eventually, node_free

pytestmark = pytest.mark.slurm

BACKFILL = Offering(
    id="backfill:ci:scavenger-2c:backfill",
    backend="ci-backfill",
    provider="backfill",
    region="scavenger",
    instance_type="slot2",
    family="backfill:ci",
    market=Market.BACKFILL,
    cores=2,
    memory_gb=4,
    arch=Arch.X86_64,
    price_per_hour=Decimal(0),
    hs23_per_core=10.0,
    max_walltime_hours=1.0,
)


def backfill(commands: CommandsClient, tag: str) -> SlurmBackfillBackend:
    return SlurmBackfillBackend("ci-backfill", commands, BACKFILL, broker_id=f"b-{tag}", account="lsst")


async def fill(pool: SlurmBackfillBackend, tag: str, cleanup: list[str]) -> list[str]:
    """Start backfill units on every free slot and wait until they all run."""
    slots = await pool.free_slots()
    ids = []
    for n in range(slots):
        unit = await pool.provision(
            ProvisionRequest(
                resource_id=f"bf{n}-{tag}",
                offering=BACKFILL,
                idempotency_token=f"bftok{n}-{tag}",
                broker_id=pool.jobs.broker_id,
                experiment="lsst",
                walltime_hours=0.25,
            )
        )
        ids.append(unit.provider_id)
    cleanup.extend(ids)

    async def all_running() -> bool:
        states = {r.provider_id: r.state for r in await pool.list_resources()}
        return all(states.get(i) is ProviderState.RUNNING for i in ids)

    await eventually(all_running, what="backfill units to run")
    return ids


async def test_free_slots_follow_the_idle_cores_of_the_pool(
    commands: CommandsClient, tag: str, cleanup: list[str]
) -> None:
    await eventually(lambda: node_free(commands), what=f"{NODE} to be idle")
    pool = backfill(commands, tag)
    assert await pool.free_slots() == 4  # 8 cores / 2 per unit
    [offering] = await pool.offerings()
    assert offering.capacity_units == 4
    ids = await fill(pool, tag, cleanup)
    assert len(ids) == 4
    assert await pool.free_slots() == 0
    [offering] = await pool.offerings()
    assert offering.capacity_units == 4  # our 4 units and no free slot: the planner takes ours off


async def test_owner_job_preempts_backfill_units(
    commands: CommandsClient, tag: str, cleanup: list[str]
) -> None:
    await eventually(lambda: node_free(commands), what=f"{NODE} to be idle")
    pool = backfill(commands, tag)
    ids = await fill(pool, tag, cleanup)
    owner = await commands.submit(
        JobSpec(
            name=f"owner.{tag}", script="#!/bin/bash\nsleep 300\n", partition="owner",
            time_limit_minutes=5, account="atlas", cores=8,
        )
    )  # fmt: skip
    cleanup.append(owner)

    async def owner_runs() -> bool:
        job = await commands.job(owner)
        return job is not None and job.state is JobState.RUNNING

    await eventually(owner_runs, timeout=60, what="the owner job to start")
    statuses = {s.job.job_id: s for s in await pool.backfill_jobs()}
    for job_id in ids:
        status = statuses[job_id]
        assert status.job.state is JobState.PREEMPTED
        assert status.resource.state is ProviderState.TERMINATED
        assert "preempted" in status.resource.detail


async def test_evacuate_cancels_every_backfill_unit_on_the_node(
    commands: CommandsClient, tag: str, cleanup: list[str]
) -> None:
    await eventually(lambda: node_free(commands), what=f"{NODE} to be idle")
    pool = backfill(commands, tag)
    ids = await fill(pool, tag, cleanup)
    assert sorted(await pool.evacuate(["cloud9"])) == []  # not on that node: nothing to do
    assert sorted(await pool.evacuate([NODE])) == sorted(ids)

    async def all_gone() -> bool:
        return all(s.job.state.finished for s in await pool.backfill_jobs())

    await eventually(all_gone, what="evacuated units to end")
    await eventually(lambda: node_free(commands), what=f"{NODE} to be free after evacuation")

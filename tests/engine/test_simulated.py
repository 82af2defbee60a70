"""The simulated backends behave like real ones: idempotent creates, boot delay, release, listings, takebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import TAG_BROKER, TAG_RESOURCE, Backend, ProviderState, ProvisionRequest
from backends.simulated import Faults, SimulatedBackfill, SimulatedCloud, SimulatedHPC
from provisioner.clock import SimulatedClock
from provisioner.domain import Market, Offering
from tests.engine.toy import offering


def request(
    o: Offering, rid: str, token: str | None = None, walltime: float | None = None
) -> ProvisionRequest:
    return ProvisionRequest(rid, o, token or f"tok-{rid}", "b1", group_id="g", walltime_hours=walltime)


async def test_cloud_create_is_idempotent_boots_and_releases(clock: SimulatedClock) -> None:
    o = offering("m1", startup_seconds=90)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id="b1")
    assert isinstance(cloud, Backend)
    first = await cloud.provision(request(o, "r1"))
    again = await cloud.provision(request(o, "r1"))
    assert first.provider_id == again.provider_id and first.state == ProviderState.PENDING
    assert len(cloud.live_units()) == 1
    clock.advance(91)
    [listed] = await cloud.list_resources()
    assert listed.state == ProviderState.RUNNING and listed.resource_id == "r1"
    assert listed.tags[TAG_BROKER] == "b1" and listed.tags[TAG_RESOURCE] == "r1"
    await cloud.release(first.provider_id)
    await cloud.release(first.provider_id)  # twice is fine
    [gone] = await cloud.list_resources()
    assert gone.state == ProviderState.TERMINATED
    clock.advance(2 * 3600)
    assert await cloud.list_resources() == []  # forgotten after the retention time


async def test_state_file_survives_a_new_instance(tmp_path: Path, clock: SimulatedClock) -> None:
    o = offering("m1")
    state = tmp_path / "cloud.json"
    a = SimulatedCloud("cloud", [o], clock, broker_id="b1", state_file=state)
    made = await a.provision(request(o, "r1"))
    b = SimulatedCloud("cloud", [o], clock, broker_id="b1", state_file=state)
    assert (await b.provision(request(o, "r1"))).provider_id == made.provider_id
    assert b.calls["provision"] == 2 and len(b.live_units()) == 1


async def test_capacity_limit_and_injected_faults(clock: SimulatedClock) -> None:
    from backends.base import AuthFailed, CapacityUnavailable, Throttled

    o = offering("m1", capacity_units=1)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id="b1", faults=Faults(throttle_next=1))
    with pytest.raises(Throttled):
        await cloud.provision(request(o, "r1"))
    await cloud.provision(request(o, "r1"))
    with pytest.raises(CapacityUnavailable):
        await cloud.provision(request(o, "r2"))
    cloud.faults.auth = True
    with pytest.raises(AuthFailed):
        await cloud.list_resources()


async def test_spot_interruptions_are_seeded_and_give_notice(clock: SimulatedClock) -> None:
    o = offering("s1", market=Market.SPOT, interruption_rate=0.5, startup_seconds=0)

    async def run(seed: int) -> list[float]:
        c = SimulatedClock(clock.now())
        cloud = SimulatedCloud("cloud", [o], c, broker_id="b1", seed=seed)
        for i in range(20):
            await cloud.provision(request(o, f"r{i}"))
        return [(u.interrupt_at - c.now()).total_seconds() for u in cloud.units.values() if u.interrupt_at]

    a, b, c = await run(7), await run(7), await run(8)
    assert a == b and a != c and len(a) == 20
    cloud = SimulatedCloud("cloud", [o], clock, broker_id="b1", seed=7)
    made = await cloud.provision(request(o, "r0"))
    unit = cloud.units[made.provider_id]
    assert unit.notice_at is not None and unit.interrupt_at is not None
    clock.set(unit.notice_at)
    [noticed] = await cloud.list_resources()
    assert noticed.interruption_notice and noticed.state == ProviderState.RUNNING
    clock.set(unit.interrupt_at)
    [gone] = await cloud.list_resources()
    assert gone.state == ProviderState.TERMINATED and gone.detail == "provider"


async def test_hpc_pilot_waits_in_queue_runs_to_walltime_and_counts_node_hours(clock: SimulatedClock) -> None:
    o = offering("node", backend="hpc", market=Market.ALLOCATION, price="0", max_walltime_hours=48)
    hpc = SimulatedHPC("hpc", [o], clock, broker_id="b1", queue_wait_seconds=600)
    await hpc.provision(request(o, "p1", walltime=2.0))
    clock.advance(599)
    assert (await hpc.list_resources())[0].state == ProviderState.PENDING
    clock.advance(2)
    assert (await hpc.list_resources())[0].state == ProviderState.RUNNING
    clock.advance(2 * 3600 + 60)
    [done] = await hpc.list_resources()
    assert done.state == ProviderState.TERMINATED and done.detail == "walltime"
    assert hpc.node_hours_used() == pytest.approx(2.0)


async def test_backfill_owner_reclaim_and_busy_marking(clock: SimulatedClock) -> None:
    o = offering("idle", backend="bf", market=Market.BACKFILL, price="0", startup_seconds=0)
    bf = SimulatedBackfill("bf", [o], clock, broker_id="b1", reclaim_rate_per_hour=0.0)
    made = await bf.provision(request(o, "n1"))
    bf.set_busy("n1", True)
    assert (await bf.list_resources())[0].busy is True
    bf.reclaim(made.provider_id, grace_seconds=30)
    assert (await bf.list_resources())[0].interruption_notice
    clock.advance(31)
    assert (await bf.list_resources())[0].state == ProviderState.TERMINATED

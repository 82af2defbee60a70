"""Busy comes from the work: heartbeats (bus, API) or the backend's view; no signal is never idleness."""

from __future__ import annotations

import asyncio
import dataclasses

from backends.base import BackendResource
from backends.simulated import SimulatedCloud
from provisioner.bus import InProcessBus
from provisioner.clock import SimulatedClock
from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.heartbeats import HEARTBEAT_TOPIC, Heartbeat, UnknownUnit, record
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering


class SilentCloud(SimulatedCloud):
    """A cloud like EC2, GCE or OpenStack: its listing says nothing about the work on a VM."""

    async def list_resources(self) -> list[BackendResource]:
        return [dataclasses.replace(r, busy=None) for r in await super().list_resources()]


async def test_steady_demand_on_a_cloud_with_no_busy_view_never_relaunches_its_vms(
    store: Store, clock: SimulatedClock
) -> None:
    """The issue's case: demand for 3 VMs, 10-minute idle drain, 23 minutes: 3 launches, not 9."""
    from datetime import timedelta

    o = offering("m1", startup_seconds=30)
    cloud = SilentCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(
        store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 3)), idle_drain=timedelta(minutes=10)
    )
    for _ in range(23):
        await engine.run_cycle()
        clock.advance(60)
    assert len(store.resources()) == 3
    assert {r.state for r in store.resources()} == {ResourceState.RUNNING}
    assert not store.events(kind="resource.busy")


async def test_unit_reported_idle_by_heartbeats_is_drained_after_the_idle_time_busy_one_is_kept(
    store: Store, clock: SimulatedClock
) -> None:
    from datetime import timedelta

    o = offering("m1", startup_seconds=0)
    cloud = SilentCloud("cloud", [o], clock, broker_id=BROKER)
    source = StaticSource(jobs=jobs("atlas", 2))
    engine = build_engine(store, {"cloud": cloud}, source, idle_drain=timedelta(minutes=10))
    await engine.run_cycle()
    clock.advance(60)
    await engine.run_cycle()
    idle, busy = (r.id for r in store.resources(states=[ResourceState.RUNNING]))
    for minute in range(15):
        record(store, Heartbeat(resource_id=busy, busy=True, running_jobs=1))
        if store.get(idle).state == ResourceState.RUNNING:  # type: ignore[union-attr]
            record(store, Heartbeat(resource_id=idle, busy=False))
        report = await engine.run_cycle()
        if minute < 9:
            assert not report.reconcile.idle_drained
        clock.advance(60)
    assert store.get(idle).state == ResourceState.RELEASED  # type: ignore[union-attr]
    assert store.get(busy).state == ResourceState.RUNNING  # type: ignore[union-attr]
    # The idle time started at the first heartbeat, not at launch.
    [drain] = [
        e
        for e in store.events(kind="resource.state", subject=idle)
        if e.payload.get("to") == str(ResourceState.DRAINING)
    ]
    assert str(drain.payload["reason"]).startswith("idle")


async def test_a_stale_heartbeat_is_no_signal_and_the_unit_is_not_drained(
    store: Store, clock: SimulatedClock
) -> None:
    from datetime import timedelta

    o = offering("m1", startup_seconds=0)
    cloud = SilentCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(
        store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)), idle_drain=timedelta(minutes=10)
    )
    await engine.run_cycle()
    clock.advance(60)
    await engine.run_cycle()
    [row] = store.resources(states=[ResourceState.RUNNING])
    record(store, Heartbeat(resource_id=row.id, busy=False))
    clock.advance(6 * 60)  # past the heartbeat's time to live: the worker went quiet
    for _ in range(30):
        report = await engine.run_cycle()
        assert not report.reconcile.idle_drained
        clock.advance(60)
    assert store.get(row.id).state == ResourceState.RUNNING  # type: ignore[union-attr]


async def test_draining_unit_whose_worker_reports_busy_is_released_only_when_it_reports_idle(
    store: Store, clock: SimulatedClock
) -> None:
    from provisioner.domain import DrainOrder, DrainReason

    o = offering("m1", startup_seconds=0)
    cloud = SilentCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    await engine.run_cycle()
    clock.advance(60)
    await engine.run_cycle()
    [row] = store.resources(states=[ResourceState.RUNNING])
    record(store, Heartbeat(resource_id=row.id, busy=True))
    await engine.actuator.drain([DrainOrder(row.id, DrainReason.NO_DEMAND)])
    clock.advance(60)
    await engine.run_cycle()
    assert store.get(row.id).state == ResourceState.DRAINING  # type: ignore[union-attr]
    record(store, Heartbeat(resource_id=row.id, busy=False))
    clock.advance(60)
    await engine.run_cycle()
    assert store.get(row.id).state == ResourceState.RELEASED  # type: ignore[union-attr]


async def test_heartbeat_names_a_unit_by_instance_id_and_refuses_unknown_or_finished_units(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SilentCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    await engine.run_cycle()
    [row] = store.resources(states=LIVE_STATES)
    assert row.provider_id is not None
    got = record(store, Heartbeat(instance_id=row.provider_id.rsplit("/", 1)[-1], busy=True))
    assert got.id == row.id and got.busy and got.heartbeat_at is not None
    for bad in (Heartbeat(resource_id="r-nope", busy=True), Heartbeat(instance_id="i-nope", busy=True)):
        try:
            record(store, bad)
        except UnknownUnit:
            continue
        raise AssertionError("an unknown unit must be refused")


async def test_heartbeat_on_the_bus_reaches_the_reconciler_through_the_running_engine(
    store: Store, clock: SimulatedClock, bus: InProcessBus
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SilentCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    await engine.run_cycle()
    [row] = store.resources(states=LIVE_STATES)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run_forever(stop))
    try:
        for _ in range(100):
            await bus.publish(HEARTBEAT_TOPIC, {"resource_id": row.id, "busy": True, "running_jobs": 2})
            await asyncio.sleep(0.02)
            fresh = store.get(row.id)
            if fresh is not None and fresh.heartbeat_at is not None:
                break
        await bus.publish(HEARTBEAT_TOPIC, {"resource_id": row.id, "bogus": 1})  # dropped, not fatal
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    fresh = store.get(row.id)
    assert fresh is not None and fresh.busy and fresh.heartbeat_at is not None
    assert [e.payload["source"] for e in store.events(kind="resource.busy", subject=row.id)] == ["heartbeat"]

"""The reconciler: orphans, lost units, stuck boots, idle drain, interruptions, provider terminations."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from backends.base import TAG_BROKER, TAG_OFFERING, TAG_RESOURCE, BackendResource, ProviderState
from backends.simulated import Faults, SimulatedCloud, SimulatedHPC, SimUnit
from provisioner.clock import SimulatedClock
from provisioner.domain import LIVE_STATES, Market, ResourceState
from provisioner.model import ResourceRow
from provisioner.reconciler import ENDED_BY_ITSELF
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering


def rows(store: Store, *states: ResourceState) -> list[ResourceRow]:
    return store.resources(states=states or None)


def live(store: Store) -> list[ResourceRow]:
    return store.resources(states=LIVE_STATES)


async def test_orphan_with_our_tag_is_released_by_default(store: Store, clock: SimulatedClock) -> None:
    o = offering("m1")
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    orphan = cloud.inject_unit(o.id, {TAG_BROKER: BROKER, TAG_RESOURCE: "r-unknown", TAG_OFFERING: o.id})
    foreign = cloud.inject_unit(o.id, {TAG_BROKER: "someone-else", TAG_RESOURCE: "r-x"})
    engine = build_engine(store, {"cloud": cloud}, StaticSource())
    report = await engine.run_cycle()
    assert report.reconcile.orphans_released == [orphan]
    assert cloud.units[orphan].state == ProviderState.TERMINATED
    assert cloud.units[foreign].state == ProviderState.RUNNING  # not ours: untouched
    assert [e.subject for e in store.events(kind="resource.orphan_released")] == ["r-unknown"]
    assert store.resources() == []


async def test_orphan_is_adopted_under_the_adopt_policy(store: Store, clock: SimulatedClock) -> None:
    o = offering("m1")
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    orphan = cloud.inject_unit(o.id, {TAG_BROKER: BROKER, TAG_RESOURCE: "r-old", TAG_OFFERING: o.id})
    engine = build_engine(store, {"cloud": cloud}, StaticSource(), orphan_policy="adopt")
    report = await engine.run_cycle()
    assert report.reconcile.adopted == ["r-old"]
    [row] = live(store)
    assert (row.id, row.provider_id, row.offering_id, row.state) == ("r-old", orphan, o.id, "running")
    clock.advance(60)
    again = await engine.run_cycle()
    assert not again.reconcile.adopted and cloud.units[orphan].state == ProviderState.RUNNING


async def test_unit_released_in_our_table_but_alive_on_the_provider_is_terminated(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    source = StaticSource(jobs=jobs("atlas", 1))
    engine = build_engine(store, {"cloud": cloud}, source)
    await engine.run_cycle()
    [row] = live(store)
    await store.transition(row.id, ResourceState.RELEASED, reason="bookkeeping says gone")
    source.jobs.clear()
    await engine.run_cycle()
    assert cloud.live_units() == []


async def test_vanished_unit_is_lost_only_after_the_grace_period_then_replanned(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(
        store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)), lost_grace=timedelta(minutes=10)
    )
    await engine.run_cycle()
    clock.advance(60)
    await engine.run_cycle()
    [row] = live(store)
    assert row.state == ResourceState.RUNNING
    del cloud.units[row.provider_id or ""]  # gone without a trace (no terminated entry either)
    for _ in range(9):
        clock.advance(60)
        report = await engine.run_cycle()
        assert not report.reconcile.lost
    clock.advance(120)
    report = await engine.run_cycle()
    assert report.reconcile.lost == [row.id] and report.replan_needed
    assert store.get(row.id).state == ResourceState.LOST  # type: ignore[union-attr]
    clock.advance(1)
    await engine.run_cycle()
    [replacement] = live(store)
    assert replacement.id != row.id and len(cloud.live_units()) == 1


async def test_slow_listing_does_not_kill_a_fresh_unit(store: Store, clock: SimulatedClock) -> None:
    o = offering("m1", startup_seconds=30)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER, listing_delay_seconds=300)
    engine = build_engine(
        store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)), lost_grace=timedelta(minutes=10)
    )
    for _ in range(8):
        report = await engine.run_cycle()
        assert not report.reconcile.lost
        clock.advance(60)
    [row] = live(store)
    assert row.state == ResourceState.RUNNING and len(store.resources()) == 1


async def test_stuck_boot_is_released_and_after_repeats_the_offering_is_avoided(
    store: Store, clock: SimulatedClock
) -> None:
    bad, good = offering("bad", price="0.1"), offering("good", price="0.2")
    cloud = SimulatedCloud("cloud", [bad, good], clock, broker_id=BROKER, faults=Faults(never_boot={bad.id}))
    engine = build_engine(
        store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)), boot_timeout=timedelta(minutes=20)
    )
    stuck: list[str] = []
    for _ in range(16):  # a stuck boot is found ~21 min after the create, replanned 7 min later
        report = await engine.run_cycle()
        stuck += report.reconcile.stuck
        clock.advance(7 * 60)
    assert len(stuck) == 3  # threshold 3: the offering's circuit opens, demand moves on
    assert all(store.get(r).state == ResourceState.RELEASED for r in stuck)  # type: ignore[union-attr]
    assert all(u.offering_id == good.id for u in cloud.live_units())
    [row] = live(store)
    assert row.offering_id == good.id and row.state == ResourceState.RUNNING
    assert store.events(kind="circuit.opened")


async def test_idle_unit_is_drained_then_released_busy_one_is_kept(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    source = StaticSource(jobs=jobs("atlas", 2))
    engine = build_engine(store, {"cloud": cloud}, source, idle_drain=timedelta(minutes=15))
    await engine.run_cycle()
    clock.advance(30)
    await engine.run_cycle()
    busy_row, idle_row = live(store)
    cloud.set_busy(busy_row.id, True)
    source.jobs.clear()
    for _ in range(4):
        clock.advance(5 * 60)
        report = await engine.run_cycle()
    assert store.get(idle_row.id).state == ResourceState.RELEASED  # type: ignore[union-attr]
    assert store.get(busy_row.id).state == ResourceState.RUNNING  # type: ignore[union-attr]
    assert idle_row.id in report.reconcile.idle_drained or idle_row.id in [
        e.subject for e in store.events(kind="resource.state") if e.payload["to"] == "draining"
    ]
    assert [u.tags[TAG_RESOURCE] for u in cloud.live_units()] == [busy_row.id]


async def test_spot_interruption_drains_and_replans_on_another_unit(
    store: Store, clock: SimulatedClock
) -> None:
    spot = offering("m1", market=Market.SPOT, price="0.1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [spot], clock, broker_id=BROKER, spot_interruption_rate=0.0)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    await engine.run_cycle()
    clock.advance(10)
    await engine.run_cycle()
    [first] = live(store)
    cloud.set_busy(first.id, True)
    cloud.interrupt(first.id, in_seconds=120)
    clock.advance(10)
    report = await engine.run_cycle()
    assert report.reconcile.interrupted == [first.id] and report.replan_needed
    assert store.get(first.id).state == ResourceState.DRAINING  # type: ignore[union-attr]
    clock.advance(1)
    await engine.run_cycle()  # the replan: the draining unit no longer counts
    clock.advance(200)
    await engine.run_cycle()  # the provider took it back: we asked to drain, so it is released
    assert store.get(first.id).state == ResourceState.RELEASED  # type: ignore[union-attr]
    [replacement] = live(store)
    assert replacement.id != first.id and replacement.state == ResourceState.RUNNING


async def test_provider_termination_we_did_not_ask_for_is_lost(store: Store, clock: SimulatedClock) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    await engine.run_cycle()
    [row] = live(store)
    cloud.interrupt(row.id, in_seconds=0)  # on-demand unit killed under us
    clock.advance(5)
    report = await engine.run_cycle()
    assert report.reconcile.lost == [row.id]
    assert "terminated by the provider" in (store.get(row.id).failure_reason or "")  # type: ignore[union-attr]


async def test_pilot_reaching_its_walltime_is_released_not_lost(store: Store, clock: SimulatedClock) -> None:
    node = offering("node", backend="hpc", market=Market.ALLOCATION, price="0", max_walltime_hours=4)
    hpc = SimulatedHPC("hpc", [node], clock, broker_id=BROKER, queue_wait_seconds=60)
    source = StaticSource(jobs=jobs("atlas", 1, walltime=2.0))
    engine = build_engine(store, {"hpc": hpc}, source)
    await engine.run_cycle()
    [pilot] = live(store)
    assert pilot.walltime_hours == pytest.approx(2.2)  # the planned 2 h plus a tenth
    clock.advance(120)
    await engine.run_cycle()
    hpc.set_busy(pilot.id, True)
    clock.advance(2.5 * 3600)  # the demand is still there: nothing drains the pilot before its limit
    report = await engine.run_cycle()
    assert report.reconcile.walltime_ended == [pilot.id] and not report.reconcile.lost
    assert store.get(pilot.id).state == ResourceState.RELEASED  # type: ignore[union-attr]


class PilotsEndingThemselves(SimulatedHPC):
    """Lists the pilots named in `ended` as Slurm lists a pilot whose wrapper exited 0 (COMPLETED)."""

    ended: set[str]

    async def list_resources(self) -> list[BackendResource]:
        return [
            dataclasses.replace(r, state=ProviderState.TERMINATED, ended_by_itself=True)
            if r.resource_id in self.ended
            else r
            for r in await super().list_resources()
        ]


async def test_pilot_that_ends_itself_for_lack_of_work_is_released_not_lost(
    store: Store, clock: SimulatedClock
) -> None:
    node = offering("node", backend="hpc", market=Market.ALLOCATION, price="0", max_walltime_hours=4)
    hpc = PilotsEndingThemselves("hpc", [node], clock, broker_id=BROKER, queue_wait_seconds=60)
    hpc.ended = set()
    engine = build_engine(store, {"hpc": hpc}, StaticSource(jobs=jobs("atlas", 1, walltime=2.0)))
    await engine.run_cycle()
    clock.advance(120)
    await engine.run_cycle()
    [pilot] = live(store)
    assert pilot.state == ResourceState.RUNNING
    hpc.ended.add(pilot.id)
    clock.advance(600)  # well inside its walltime: the pilot ended itself, nobody took it away
    report = await engine.run_cycle()
    assert report.reconcile.ended_by_itself == [pilot.id] and not report.reconcile.lost
    row = store.get(pilot.id)
    assert row is not None and row.state == ResourceState.RELEASED and not row.failure_reason
    reasons = [e.payload.get("reason") for e in store.events(kind="resource.state", subject=pilot.id)]
    assert ENDED_BY_ITSELF in reasons


async def test_failed_intent_whose_unit_exists_after_all_is_released(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    source = StaticSource()
    engine = build_engine(store, {"cloud": cloud}, source)
    intent = await store.record_intent(o, group_id="g", experiment="atlas")
    await cloud.provision(engine.actuator._request(intent, o))  # the call happened...
    await store.transition(intent.id, ResourceState.FAILED, failure_reason="gave up")  # ...we thought not
    report = await engine.run_cycle()
    assert intent.id in report.reconcile.released
    assert cloud.live_units() == [] and store.get(intent.id).state == ResourceState.RELEASED  # type: ignore[union-attr]


async def test_backend_that_cannot_be_listed_is_not_judged_by_its_silence(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(
        store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)), lost_grace=timedelta(minutes=1)
    )
    await engine.run_cycle()
    cloud.faults.list_timeout = True
    for _ in range(5):
        clock.advance(120)
        report = await engine.run_cycle()
        assert report.reconcile.skipped_backends == ["cloud"] and not report.reconcile.lost
    [row] = live(store)
    assert row.state == ResourceState.PROVISIONING


async def test_unit_drained_while_provisioning_gets_its_launch_time_from_the_listing(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=300)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    source = StaticSource(jobs=jobs("atlas", 1))
    engine = build_engine(store, {"cloud": cloud}, source)
    await engine.run_cycle()
    [row] = live(store)
    assert row.state == ResourceState.PROVISIONING
    source.jobs.clear()
    await store.transition(row.id, ResourceState.DRAINING, reason="no demand left")
    clock.advance(600)  # booted at +300 s while we were draining it, and took a job
    cloud.set_busy(row.id, True)
    await engine.run_cycle()
    stored = store.get(row.id)
    assert stored is not None and stored.launched_at is not None
    [unit] = [u for u in cloud.units.values() if u.tags[TAG_RESOURCE] == row.id]
    assert stored.launched_at.replace(tzinfo=unit.started_at.tzinfo) == unit.started_at  # type: ignore[union-attr]


class LateCounterCloud(SimulatedCloud):
    """A cloud whose bytes-out counters arrive late, as EC2's NetworkOut reaches CloudWatch minutes
    after the traffic: a terminated unit's counter still moves."""

    late: dict[str, int]

    def egress_bytes(self, u: SimUnit, until: datetime) -> int | None:
        return self.late.get(u.provider_id, 0)


async def test_a_released_units_late_egress_is_still_recorded(store: Store, clock: SimulatedClock) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = LateCounterCloud("cloud", [o], clock, broker_id=BROKER)
    cloud.late = {}
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    await engine.run_cycle()
    [row] = live(store)
    assert row.provider_id is not None
    cloud.late[row.provider_id] = 4_000
    clock.advance(60)
    await engine.run_cycle()
    await store.transition(row.id, ResourceState.RELEASED, reason="done")
    await cloud.release(row.provider_id)
    cloud.late[row.provider_id] = 9_000  # the last minutes' bytes, counted after it stopped
    clock.advance(60)
    await engine.run_cycle()
    clock.advance(60)
    await engine.run_cycle()  # nothing moved: no event, no double count
    moved = [(e.payload["previous"], e.payload["bytes"]) for e in store.events(kind="resource.egress")]
    assert moved == [(0, 4_000), (4_000, 9_000)]

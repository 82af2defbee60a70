"""The whole cycle end to end on simulated cloud, HPC and backfill backends with a trivial planner."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func
from sqlmodel import select

from backends.simulated import SimulatedBackfill, SimulatedCloud, SimulatedHPC
from provisioner.bus import InProcessBus
from provisioner.clock import SimulatedClock
from provisioner.domain import LIVE_STATES, Market, Offering, ResourceState
from provisioner.fleet import Fleet, Listing
from provisioner.model import DecisionRow, DemandGroupRow, EventRow, PlanRow, ResourceRow
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering


def count(store: Store, table: type) -> int:
    with store.session() as s:
        return int(s.exec(select(func.count()).select_from(table)).one())


def world(clock: SimulatedClock) -> tuple[SimulatedCloud, SimulatedHPC, SimulatedBackfill]:
    cloud = SimulatedCloud(
        "cloud", [offering("m1", price="0.40", startup_seconds=60)], clock, broker_id=BROKER
    )
    hpc_node = offering(
        "node", backend="hpc", market=Market.ALLOCATION, price="0", max_walltime_hours=48, capacity_units=2
    )
    hpc = SimulatedHPC("hpc", [hpc_node], clock, broker_id=BROKER, queue_wait_seconds=300)
    bf_node = offering("idle", backend="bf", market=Market.BACKFILL, price="0", startup_seconds=30)
    backfill = SimulatedBackfill("bf", [bf_node], clock, broker_id=BROKER, reclaim_rate_per_hour=0.0)
    return cloud, hpc, backfill


async def test_cycle_plans_acts_and_reconciles_across_backends(store: Store, clock: SimulatedClock) -> None:
    assert isinstance(store.bus, InProcessBus)
    published = await store.bus.subscribe("events/#")
    cloud, hpc, backfill = world(clock)
    source = StaticSource(jobs=jobs("atlas", 5) + jobs("lsst", 3, preemptible=True))
    engine = build_engine(store, {"cloud": cloud, "hpc": hpc, "bf": backfill}, source)

    report = await engine.run_cycle()
    # atlas: HPC (free) takes 2 then refuses for capacity, the rest is replanned onto the cloud;
    # lsst is preemptible: free backfill.
    assert report.replans == 1
    by_backend: dict[str, int] = {}
    for row in store.resources(states=LIVE_STATES):
        by_backend[row.backend] = by_backend.get(row.backend, 0) + 1
    assert by_backend == {"hpc": 2, "cloud": 3, "bf": 3}
    assert count(store, PlanRow) == 2 and count(store, DemandGroupRow) == 2
    with store.session() as s:
        decisions = s.exec(select(DecisionRow)).all()
    atlas = [d for d in decisions if d.experiment == "atlas"]
    assert {d.offering_id for d in atlas} == {"hpc:r1:node:allocation", "cloud:r1:m1:on_demand"}
    assert all(d.explanation["group_id"] == d.group_id for d in decisions)
    assert any(
        r["reason"] == "backfill only takes preemptible work" for r in atlas[0].explanation["rejected"]
    )

    clock.advance(301)
    report = await engine.run_cycle()
    assert not report.act.created  # the fleet already serves the demand
    assert {r.state for r in store.resources(states=LIVE_STATES)} == {ResourceState.RUNNING}
    for row in store.resources(states=LIVE_STATES):
        (hpc if row.backend == "hpc" else cloud if row.backend == "cloud" else backfill).set_busy(
            row.id, True
        )

    # The work is done: everything goes idle, drains and is released.
    for row in store.resources(states=LIVE_STATES):
        (hpc if row.backend == "hpc" else cloud if row.backend == "cloud" else backfill).set_busy(
            row.id, False
        )
    source.jobs.clear()
    for _ in range(4):
        clock.advance(6 * 60)
        await engine.run_cycle()
    assert store.resources(states=LIVE_STATES) == []
    assert not cloud.live_units() and not hpc.live_units() and not backfill.live_units()

    # Every stored event was published, in order, with its id.
    stored = [e.id for e in store.events()]
    seen = []
    while published.pending():
        seen.append((await published.get(0)).payload["id"])
    assert seen == stored


async def test_dry_run_plans_but_stores_and_starts_nothing(store: Store, clock: SimulatedClock) -> None:
    cloud, hpc, backfill = world(clock)
    engine = build_engine(
        store, {"cloud": cloud, "hpc": hpc, "bf": backfill}, StaticSource(jobs=jobs("atlas", 3))
    )
    report = await engine.run_cycle(dry_run=True)
    assert report.plan is not None and sum(i.units for i in report.plan.items) == 3
    for table in (PlanRow, DecisionRow, ResourceRow, EventRow, DemandGroupRow):
        assert count(store, table) == 0, table
    assert cloud.calls["provision"] == hpc.calls["provision"] == 0


async def test_requested_row_found_on_the_provider_is_resolved_by_the_reconciler(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource())
    intent = await store.record_intent(o, group_id="g", experiment="atlas")
    made = await cloud.provision(engine.actuator._request(intent, o))  # then the broker died
    listing = Listing("cloud", clock.now(), await cloud.list_resources())
    report = await engine.reconciler.reconcile(Fleet(), {"cloud": listing}, {o.id: o})
    assert report.resolved_intents == [intent.id]
    row = store.get(intent.id)
    assert row is not None and row.provider_id == made.provider_id and row.state == ResourceState.RUNNING
    assert cloud.calls["provision"] == 1


async def test_circuit_state_survives_a_restart(store: Store, clock: SimulatedClock) -> None:
    from provisioner.circuit import CircuitBreaker, CircuitSettings

    settings = CircuitSettings(threshold=2, base_cooloff=timedelta(minutes=5))
    first = CircuitBreaker(store.db, clock, settings)
    first.record_failure("offering:x", "boom")
    assert not first.is_open("offering:x")
    trip = first.record_failure("offering:x", "boom")
    assert trip.opened and trip.open_until == clock.now() + timedelta(minutes=5)
    again = CircuitBreaker(store.db, clock, settings)  # a new process
    assert again.is_open("offering:x")
    clock.advance(301)
    assert not again.is_open("offering:x")
    trip = again.record_failure("offering:x", "boom")  # still failing: twice as long
    assert trip.open_until == clock.now() + timedelta(minutes=10)
    again.record_success("offering:x")
    assert not again.is_open("offering:x") and again.record_failure("offering:x", "x").failures == 1


async def test_injected_catalog_replaces_backend_offerings_and_drops_unconfigured_backends(
    store: Store, clock: SimulatedClock
) -> None:
    from tests.engine.harness import build_engine as build

    listed = offering("m1", price="0.40")
    cheaper_elsewhere = offering("x1", backend="unconfigured", price="0.01")
    catalog_price = offering("m1", price="0.30")  # same id, catalog's live price
    cloud = SimulatedCloud("cloud", [listed], clock, broker_id=BROKER)
    engine = build(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))

    async def catalog() -> list[Offering]:
        return [cheaper_elsewhere, catalog_price]

    engine.offerings_fn = catalog
    report = await engine.run_cycle()
    assert [o.id for o in report.offerings] == [catalog_price.id]
    [row] = store.resources(states=LIVE_STATES)
    assert row.backend == "cloud" and row.price_micro_per_hour == 300_000


async def test_plan_drain_orders_drain_busy_units_and_release_them_once_idle(
    store: Store, clock: SimulatedClock
) -> None:
    import dataclasses

    from provisioner.domain import DrainOrder, DrainReason

    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    source = StaticSource(jobs=jobs("atlas", 1))
    engine = build_engine(store, {"cloud": cloud}, source)
    await engine.run_cycle()
    [row] = store.resources(states=LIVE_STATES)
    cloud.set_busy(row.id, True)
    base_planner = engine.planner

    def planner_that_drains(groups, offerings, fleet, constraints):  # type: ignore[no-untyped-def]
        plan = base_planner(groups, offerings, fleet, constraints)
        drains = tuple(DrainOrder(u.resource_id, DrainReason.CHEAPER_ELSEWHERE) for u in fleet)
        return dataclasses.replace(plan, items=(), drains=drains)

    engine.planner = planner_that_drains
    clock.advance(60)
    report = await engine.run_cycle()
    assert report.drained == [row.id]
    assert store.get(row.id).state == ResourceState.DRAINING  # type: ignore[union-attr]
    clock.advance(60)
    await engine.run_cycle()
    assert store.get(row.id).state == ResourceState.DRAINING  # type: ignore[union-attr]  # still busy
    cloud.set_busy(row.id, False)
    clock.advance(60)
    await engine.run_cycle()
    assert store.get(row.id).state == ResourceState.RELEASED  # type: ignore[union-attr]
    assert cloud.live_units() == []

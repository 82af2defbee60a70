"""One unexpected backend answer never stops the broker: isolation per intent, per backend, per step."""

from __future__ import annotations

import dataclasses

from backends.base import (
    TAG_BROKER,
    TAG_OFFERING,
    TAG_RESOURCE,
    BackendResource,
    ProviderState,
    ProvisionRequest,
)
from backends.simulated import SimulatedCloud
from provisioner.clock import SimulatedClock
from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering


class PoisonCloud(SimulatedCloud):
    """Answers creates with something the code does not expect (as a truncated EC2 reply would)."""

    poison = False

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        if self.poison:
            self.calls["provision"] += 1
            raise KeyError("InstanceId")
        return await super().provision(request)


class BrokenListing(SimulatedCloud):
    async def list_resources(self) -> list[BackendResource]:
        raise TypeError("'NoneType' object is not subscriptable")


async def test_poison_create_does_not_stop_reconciliation_of_the_rest_of_the_fleet(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=30)
    cloud = PoisonCloud("cloud", [o], clock, broker_id=BROKER)
    source = StaticSource(jobs=jobs("atlas", 2))
    engine = build_engine(store, {"cloud": cloud}, source)
    await engine.run_cycle()
    booting = {r.id for r in store.resources(states=[ResourceState.PROVISIONING])}
    assert len(booting) == 2
    orphan = cloud.inject_unit(o.id, {TAG_BROKER: BROKER, TAG_RESOURCE: "r-gone", TAG_OFFERING: o.id})
    cloud.poison = True
    source.jobs.extend(jobs("cms", 1))
    clock.advance(60)
    report = await engine.run_cycle()
    # The create raised KeyError, yet the cycle finished and the reconciler did its work.
    assert set(report.reconcile.booted) == booting
    assert report.reconcile.orphans_released == [orphan]
    [intent] = store.resources(states=[ResourceState.REQUESTED])
    assert intent.attempts == 1 and "KeyError" in (intent.failure_reason or "")
    assert any(k.startswith("resource:") or "act" in k for k in report.errors) or report.act.pending


async def test_poison_intent_is_counted_backed_off_and_finally_failed_with_its_reason(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1")
    cloud = PoisonCloud("cloud", [o], clock, broker_id=BROKER)
    cloud.poison = True
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    await engine.run_cycle()
    [intent] = store.resources(states=[ResourceState.REQUESTED])
    assert intent.attempts == 1
    # At once again: backed off, no call made.
    report = await engine.run_cycle()
    assert report.act.backing_off == [intent.id] and cloud.calls["provision"] == 1
    cycles = 0
    while store.get(intent.id).state == ResourceState.REQUESTED:  # type: ignore[union-attr]
        clock.advance(601)  # past the longest back-off
        await engine.run_cycle()
        cycles += 1
        assert cycles < 20, "a poison intent must be failed after a bounded number of calls"
    failed = store.get(intent.id)
    assert failed is not None and failed.state == ResourceState.FAILED
    # Counted on every call; failed with the reason once the offering is backed off after repeats.
    assert failed.attempts == cloud.calls["provision"] >= 2
    assert "KeyError" in (failed.failure_reason or "")


async def test_poison_intent_is_failed_after_max_attempts_when_nothing_else_stops_it(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1")
    cloud = PoisonCloud("cloud", [o], clock, broker_id=BROKER)
    cloud.poison = True
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    engine.circuit.settings = dataclasses.replace(engine.circuit.settings, threshold=1000)
    await engine.run_cycle()
    [intent] = store.resources(states=[ResourceState.REQUESTED])
    for _ in range(30):
        if store.get(intent.id).state != ResourceState.REQUESTED:  # type: ignore[union-attr]
            break
        clock.advance(601)
        await engine.run_cycle()
    failed = store.get(intent.id)
    assert failed is not None and failed.state == ResourceState.FAILED
    assert failed.attempts == engine.actuator.settings.max_intent_attempts == cloud.calls["provision"]
    assert "gave up after 12 calls" in (failed.failure_reason or "") and "KeyError" in (
        failed.failure_reason or ""
    )


async def test_a_backend_whose_listing_raises_is_skipped_and_the_others_go_on(
    store: Store, clock: SimulatedClock
) -> None:
    bad = offering("m1", backend="bad", price="0.10")
    good = offering("m2", backend="good", price="0.50")
    broken = BrokenListing("bad", [bad], clock, broker_id=BROKER)
    cloud = SimulatedCloud("good", [good], clock, broker_id=BROKER)
    engine = build_engine(store, {"bad": broken, "good": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    report = await engine.run_cycle()
    assert "TypeError" in report.errors["bad:observe"]
    assert report.reconcile.skipped_backends == ["bad"]  # not judged by its silence
    [row] = store.resources(states=LIVE_STATES)
    assert row.backend == "good" and cloud.live_units()[0].state in (
        ProviderState.PENDING,
        ProviderState.RUNNING,
    )


async def test_a_planner_bug_still_lets_the_reconciler_release_cancelled_demand(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1", startup_seconds=0)
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource())
    orphan = cloud.inject_unit(o.id, {TAG_BROKER: BROKER, TAG_RESOURCE: "r-x", TAG_OFFERING: o.id})

    def broken_planner(*_args: object) -> object:
        raise ZeroDivisionError("division by zero")

    engine.planner = broken_planner  # type: ignore[assignment]
    report = await engine.run_cycle()
    assert "ZeroDivisionError" in report.errors["engine:plan"]
    assert report.reconcile.orphans_released == [orphan]

"""The actuator: intent before call, retries, failover to the next offering, and no create/fail loops."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from backends.base import (
    AuthFailed,
    BackendError,
    BackendResource,
    CapacityUnavailable,
    InvalidRequest,
    ProvisionRequest,
    QuotaExceeded,
    Throttled,
)
from backends.simulated import Faults, SimulatedCloud
from provisioner.actuator import pilot_walltime
from provisioner.clock import SimulatedClock
from provisioner.domain import AllocationInfo, Market, Offering, ResourceState
from provisioner.model import ResourceRow
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering


def live(store: Store) -> list[ResourceRow]:
    return store.resources(states=[ResourceState.PROVISIONING, ResourceState.RUNNING])


async def test_intent_row_is_committed_before_the_provider_is_called(
    store: Store, clock: SimulatedClock
) -> None:
    seen: list[tuple[str, str]] = []

    class InspectingCloud(SimulatedCloud):
        async def provision(self, request: ProvisionRequest) -> BackendResource:
            # A fresh session: only committed data is visible here.
            with Session(store.db) as s:
                row = s.get(ResourceRow, request.resource_id)
                assert row is not None, "no committed intent row before the backend call"
                seen.append((row.state, row.idempotency_token))
                assert row.idempotency_token == request.idempotency_token
            return await super().provision(request)

    o = offering("m1")
    cloud = InspectingCloud("cloud", [o], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 3)))
    report = await engine.run_cycle()
    assert len(report.act.created) == 3
    assert seen and all(state == ResourceState.REQUESTED for state, _ in seen)
    assert {r.state for r in live(store)} == {ResourceState.PROVISIONING}


async def test_throttling_is_retried_with_backoff_then_succeeds(store: Store, clock: SimulatedClock) -> None:
    o = offering("m1")
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER, faults=Faults(throttle_next=2))
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    t0 = clock.now()
    report = await engine.run_cycle()
    assert len(report.act.created) == 1 and cloud.calls["provision"] == 3
    [row] = live(store)
    assert row.attempts == 3
    assert (clock.now() - t0).total_seconds() >= 2  # it backed off (1 s, then 2 s) before retrying


async def test_throttling_past_the_budget_keeps_the_intent_and_retries_with_the_same_token(
    store: Store, clock: SimulatedClock
) -> None:
    o = offering("m1")
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER, faults=Faults(throttle_next=6))
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 1)))
    first = await engine.run_cycle()
    assert first.act.pending and not first.act.created and cloud.calls["provision"] == 4
    [intent] = store.resources(states=[ResourceState.REQUESTED])
    clock.advance(60)
    second = await engine.run_cycle()
    assert second.act.resumed == [intent.id]  # the same row, not a new intent
    assert len(cloud.live_units()) == 1 and cloud.live_units()[0].token == intent.idempotency_token
    assert len(store.resources()) == 1


async def test_timeout_after_the_create_does_not_double_the_unit(store: Store, clock: SimulatedClock) -> None:
    o = offering("m1")
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER, faults=Faults(timeout_next=1))
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 2)))
    report = await engine.run_cycle()
    assert len(report.act.created) == 2
    assert cloud.calls["provision"] == 3  # one timed out after creating; its retry got the same unit back
    assert len(cloud.live_units()) == 2
    assert {r.provider_id for r in live(store)} == {u.provider_id for u in cloud.live_units()}


@pytest.mark.parametrize("fault", ["capacity", "quota"])
async def test_capacity_or_quota_error_replans_onto_the_next_offering_in_the_same_cycle(
    fault: str, store: Store, clock: SimulatedClock
) -> None:
    cheap, dear = offering("cheap", price="0.10"), offering("dear", price="0.50")
    faults = Faults(capacity={cheap.id}) if fault == "capacity" else Faults(quota={cheap.id})
    cloud = SimulatedCloud("cloud", [cheap, dear], clock, broker_id=BROKER, faults=faults)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 2)))
    report = await engine.run_cycle()
    assert report.replans == 1 and len(report.plan_ids) == 2
    assert {r.offering_id for r in live(store)} == {dear.id} and len(live(store)) == 2
    [failed] = store.resources(states=[ResourceState.FAILED])
    assert failed.offering_id == cheap.id and failed.failure_reason
    assert cloud.calls["provision"] == 3  # one refusal, then two creates elsewhere
    clock.advance(60)
    again = await engine.run_cycle()
    assert cheap.id in (again.constraints.unavailable_offerings if again.constraints else set())
    assert cloud.calls["provision"] == 3 and len(cloud.live_units()) == 2


class AlwaysFails:
    """A backend whose every create fails the same way; counts the calls."""

    def __init__(self, name: str, offerings: Sequence[Offering], error: type[BackendError]) -> None:
        self.name = name
        self._offerings = list(offerings)
        self.error = error
        self.provision_calls = 0
        self.list_calls = 0

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        self.provision_calls += 1
        raise self.error(self.name, "always fails", offering_id=request.offering.id)

    async def list_resources(self) -> list[BackendResource]:
        self.list_calls += 1
        return []

    async def release(self, provider_id: str) -> None:
        return None

    async def offerings(self) -> list[Offering]:
        return list(self._offerings)

    async def close(self) -> None:
        return None


# Calls over 30 cycles one minute apart, and why:
#  auth: one call disables the backend for 24 h;
#  capacity/quota: one call per offering marks it unavailable for 30 min;
#  invalid: per offering, 3 failures open its circuit for 5 min, then 10, 20...: (3 + 1 + 1) × 2 offerings;
#  throttled: 4 attempts per intent; 3 failing cycles open the backend circuit (5, 10, 20 min).
@pytest.mark.parametrize(
    ("error", "max_calls"),
    [(AuthFailed, 1), (CapacityUnavailable, 2), (QuotaExceeded, 2), (InvalidRequest, 10), (Throttled, 4 * 5)],
)
async def test_a_backend_that_always_fails_is_not_hammered(
    error: type[BackendError], max_calls: int, store: Store, clock: SimulatedClock
) -> None:
    bad = AlwaysFails("cloud", [offering("a", price="0.1"), offering("b", price="0.2")], error)
    engine = build_engine(store, {"cloud": bad}, StaticSource(jobs=jobs("atlas", 1)))
    for _ in range(30):
        await engine.run_cycle()
        clock.advance(60)
    assert 1 <= bad.provision_calls <= max_calls
    assert len(store.resources(states=[ResourceState.REQUESTED, ResourceState.FAILED])) <= max_calls
    if error is AuthFailed:
        [disabled] = store.events(kind="backend.disabled")
        assert disabled.subject == "cloud" and "always fails" in disabled.payload["error"]
        assert bad.list_calls == 1  # not even listed while disabled


async def test_auth_failure_moves_demand_to_another_backend(store: Store, clock: SimulatedClock) -> None:
    bad = AlwaysFails("bad", [offering("a", backend="bad", price="0.1")], AuthFailed)
    good_o = offering("b", backend="good", price="0.9")
    good = SimulatedCloud("good", [good_o], clock, broker_id=BROKER)
    engine = build_engine(store, {"bad": bad, "good": good}, StaticSource(jobs=jobs("atlas", 2)))
    report = await engine.run_cycle()
    assert report.act.disabled_backends == {"bad"}
    assert {r.backend for r in live(store)} == {"good"} and len(live(store)) == 2
    for _ in range(5):
        clock.advance(300)
        await engine.run_cycle()
    assert bad.provision_calls == 1 and len(good.live_units()) == 2


def test_clock_is_utc(clock: SimulatedClock) -> None:
    assert isinstance(clock.now(), datetime) and clock.now().utcoffset() is not None


def test_pilot_walltime_adds_a_tenth_in_whole_minutes_within_the_offerings_limit() -> None:
    hpc = offering("node", backend="hpc", market=Market.ALLOCATION, price="0", max_walltime_hours=24)
    assert pilot_walltime(2.0, hpc) == pytest.approx(2.2)  # a tenth of the run, not half an hour
    assert pilot_walltime(10.0, hpc) == pytest.approx(11.0)
    assert pilot_walltime(1 / 60, hpc) == pytest.approx(1 / 60)  # slack under a minute adds nothing
    assert pilot_walltime(23.0, hpc) == 24.0  # never past what the partition allows
    assert pilot_walltime(5.0, offering("vm")) is None  # a VM has no time limit: the broker releases it


def test_pilot_walltime_never_reaches_past_the_allocations_end_date() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    hpc = dataclasses.replace(
        offering("node", backend="hpc", market=Market.ALLOCATION, price="0", max_walltime_hours=24),
        allocation=AllocationInfo("a", "acct", "debug", None, 100, 0, start, start + timedelta(days=10)),
    )
    assert pilot_walltime(6.0, hpc, start + timedelta(days=10) - timedelta(hours=2)) == pytest.approx(2.0)
    assert pilot_walltime(6.0, hpc, start + timedelta(days=1)) == pytest.approx(6.6)

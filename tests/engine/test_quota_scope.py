"""Quota scopes read from provider errors, and the actuator blocking all a quota covers at once."""

from __future__ import annotations

import dataclasses

from backends.base import BackendResource, ProvisionRequest, QuotaExceeded
from backends.quota import QuotaScope, gce_scope
from backends.simulated import SimulatedCloud
from provisioner.clock import SimulatedClock
from provisioner.domain import LIVE_STATES, Market
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering


def gce(name: str, market: Market = Market.ON_DEMAND, region: str = "us-central1", gpu: str | None = None):  # type: ignore[no-untyped-def]
    o = offering(name, backend="gce", market=market)
    return dataclasses.replace(
        o,
        region=region,
        family=f"gce:{name.split('-')[0]}",
        gpu_model=gpu,
        id=f"gce:{region}:{name}:{market}",
    )


def test_gce_family_cpu_quota_covers_that_family_in_that_region_in_every_market() -> None:
    scope = gce_scope(
        "gce",
        "insert: QUOTA_EXCEEDED: Quota 'N2_CPUS' exceeded. Limit: 24.0 in region us-central1.",
        gce("n2-standard-8"),
    )
    assert scope.limit == 24 and scope.region == "us-central1"
    assert scope.covers(gce("n2-highmem-4")) and scope.covers(gce("n2-standard-8", Market.SPOT))
    assert not scope.covers(gce("c3-standard-8")) and not scope.covers(
        gce("n2-standard-8", region="europe-west4")
    )


def test_gce_preemptible_cpu_quota_covers_spot_only_and_plain_cpus_the_whole_region() -> None:
    spot = gce_scope(
        "gce",
        "Quota 'PREEMPTIBLE_CPUS' exceeded. Limit: 0.0 in region us-central1.",
        gce("n2-standard-8", Market.SPOT),
    )
    assert spot.covers(gce("c3-standard-8", Market.SPOT)) and not spot.covers(gce("c3-standard-8"))
    cpus = gce_scope("gce", "Quota 'CPUS' exceeded. Limit: 72.0 in region us-central1.", gce("n2-standard-8"))
    assert cpus.covers(gce("c3-standard-8")) and cpus.covers(gce("n2-standard-8", Market.SPOT))
    gpu = gce_scope(
        "gce",
        "Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 1.0 in region us-central1.",
        gce("n1-standard-8", gpu="T4"),
    )
    assert gpu.covers(gce("n1-standard-4", gpu="T4")) and not gpu.covers(gce("n1-standard-4"))


def test_unreadable_gce_quota_message_blocks_the_offerings_family_market_and_region() -> None:
    scope = gce_scope("gce", "QUOTA_EXCEEDED: something new", gce("n2-standard-8", Market.SPOT))
    assert scope.covers(gce("n2-highcpu-2", Market.SPOT)) and not scope.covers(gce("n2-highcpu-2"))


class QuotaCloud(SimulatedCloud):
    """Every spot create is refused by a region-wide spot quota, as EC2's MaxSpotInstanceCountExceeded."""

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        o = request.offering
        if o.market is Market.SPOT:
            self.calls["provision"] += 1
            raise QuotaExceeded(
                self.name,
                "MaxSpotInstanceCountExceeded",
                offering_id=o.id,
                scope=QuotaScope(self.name, "MaxSpotInstanceCount", region=o.region, market=Market.SPOT),
            )
        return await super().provision(request)


async def test_one_quota_error_blocks_every_covered_offering_and_the_demand_goes_on_demand_now(
    store: Store, clock: SimulatedClock
) -> None:
    spots = [offering(f"s{i}", market=Market.SPOT, price=f"0.{10 + i}") for i in range(33)]
    ondemand = offering("od", price="0.90")
    cloud = QuotaCloud("cloud", [*spots, ondemand], clock, broker_id=BROKER)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", 4)))
    report = await engine.run_cycle()
    assert cloud.calls["provision"] == 1 + 4  # one refused spot call, then four on-demand units
    live = store.resources(states=LIVE_STATES)
    assert len(live) == 4 and {r.offering_id for r in live} == {ondemand.id}
    assert report.replans == 1
    # The next cycles do not try spot again while the quota's cool-off runs.
    clock.advance(60)
    await engine.run_cycle()
    assert cloud.calls["provision"] == 5


class FillingSpotCloud(SimulatedCloud):
    """Spot creates are refused by the region's spot quota while `full` is set, and succeed otherwise."""

    full = True

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        o = request.offering
        if o.market is Market.SPOT and self.full:
            raise QuotaExceeded(
                self.name,
                "MaxSpotInstanceCountExceeded",
                offering_id=o.id,
                scope=QuotaScope(self.name, "MaxSpotInstanceCount", region=o.region, market=Market.SPOT),
            )
        return await super().provision(request)


async def test_a_quota_that_had_room_again_starts_a_new_cool_off_instead_of_doubling(
    store: Store, clock: SimulatedClock
) -> None:
    spot = offering("s", market=Market.SPOT, price="0.10")
    cloud = FillingSpotCloud("cloud", [spot, offering("od", price="0.90")], clock, broker_id=BROKER)
    source = StaticSource(jobs=jobs("atlas", 1))
    engine = build_engine(store, {"cloud": cloud}, source)
    await engine.run_cycle()
    [first] = store.events(kind="quota.blocked")
    assert first.payload["repeats"] == 1
    clock.advance(31 * 60)  # past the 30-minute cool-off: spot is tried again, and the quota has room
    cloud.full = False
    source.jobs = jobs("atlas", 3)
    await engine.run_cycle()
    assert any(r.offering_id == spot.id for r in store.resources(states=LIVE_STATES))
    cloud.full = True  # full again: a new refusal is the first of a new episode, not the second
    source.jobs = jobs("atlas", 8)
    await engine.run_cycle()
    second = store.events(kind="quota.blocked")[-1]
    assert second.payload["repeats"] == 1, second.payload


async def test_a_quota_refused_again_long_after_its_last_block_ended_is_not_a_repeat(
    store: Store, clock: SimulatedClock
) -> None:
    engine = build_engine(store, {}, StaticSource())
    assert engine.circuit.block_scope("quota:x", "full", []).failures == 1
    assert engine.circuit.block_scope("quota:x", "full", []).failures == 2  # at once: a repeat, doubled
    clock.advance(24 * 3600)  # the last block ended hours ago (more than the 6 h maximum cool-off)
    trip = engine.circuit.block_scope("quota:x", "full", [])
    assert trip.failures == 1 and trip.open_until == clock.now() + engine.circuit.settings.unavailable_cooloff

"""The cost maths of the planner: packing, spot risk, allocation value, start-up and marginal egress."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from policies.egress import marginal_egress_cost
from provisioner.catalog import load_catalog
from provisioner.domain import (
    Arch,
    EgressRoute,
    EgressTier,
    ExperimentLimits,
    Market,
    PlanningConstraints,
)
from provisioner.planner import plan
from provisioner.planner.columns import OfferingColumns
from provisioner.planner.cost import (
    PlanContext,
    base_total,
    group_costs,
    interruption_factor,
    jobs_per_unit,
    marginal_egress_cost_float,
    risk_factors,
)
from tests.planner.factories import NOW, allocation_offering, group, offering
from tests.planner.instances import random_instance

TIERS = (
    EgressTier(10.0, Decimal("0.10")),
    EgressTier(100.0, Decimal("0.05")),
    EgressTier(None, Decimal("0.01")),
)


def only_item(p):  # type: ignore[no-untyped-def]
    assert len(p.items) == 1, p.items
    return p.items[0]


def test_packing_takes_the_scarcest_resource_and_charges_the_wasted_cores() -> None:
    o = offering("box", cores=16, memory_gb=64.0, price="1.60", hs23_per_core=10.0)
    g = group(cores_per_job=3, memory_gb_per_job=10.0, jobs=5, walltime_hours=1.0)
    cols = OfferingColumns.from_offerings([o])
    assert jobs_per_unit(g, cols).tolist() == [5]  # min(16 // 3, 64 // 10) = min(5, 6)
    item = only_item(plan([g], [o], (), PlanningConstraints(now=NOW)))
    # 1.60 USD/h over 5 jobs × 3 cores × 10 HS23: one core of the 16 is wasted and paid for
    assert float(item.cost_per_hs23_hour.compute) == pytest.approx(1.60 / 150, rel=1e-9)
    assert item.units == 1 and item.jobs == 5


def test_gpu_jobs_pack_by_gpu_count() -> None:
    o = offering("gpu", cores=32, memory_gb=256.0, gpu_model="A100", gpu_count=4)
    g = group(cores_per_job=4, memory_gb_per_job=16.0, gpus_per_job=2)
    assert jobs_per_unit(g, OfferingColumns.from_offerings([o])).tolist() == [2]


def test_spot_risk_inflates_cost_by_expected_rerun_time() -> None:
    rate, hours = 0.1, 4.0
    factor = interruption_factor(np.array([rate]), np.array([hours]))[0]
    assert factor == pytest.approx(math.expm1(rate * hours) / (rate * hours))
    assert factor == pytest.approx(1 + rate * hours / 2, rel=0.05)  # ≈ half a job lost per interruption
    assert interruption_factor(np.array([0.0]), np.array([hours]))[0] == 1.0
    spot = offering(
        "c", market=Market.SPOT, price="0.50", interruption_rate_per_hour=rate, hs23_per_core=10.0
    )
    g = group(walltime_hours=hours, jobs=16)
    item = only_item(plan([g], [spot], (), PlanningConstraints(now=NOW)))
    breakdown = item.cost_per_hs23_hour
    assert float(breakdown.interruption) == pytest.approx(float(breakdown.compute) * (factor - 1), rel=1e-6)


def test_spot_with_high_interruption_loses_to_on_demand_for_long_jobs() -> None:
    on_demand = offering("m", price="1.00")
    risky = offering("m", price="0.70", market=Market.SPOT, interruption_rate_per_hour=0.2)
    long_jobs = group(walltime_hours=24.0, jobs=16)
    short_jobs = group("short", walltime_hours=0.5, jobs=16)
    p = plan([long_jobs, short_jobs], [on_demand, risky], (), PlanningConstraints(now=NOW))
    chosen = {it.group_id: it.offering_id for it in p.items}
    assert chosen["g"] == on_demand.id
    assert chosen["short"] == risky.id


def test_allocation_hours_cost_their_value_but_no_money() -> None:
    alloc = allocation_offering(cores=64, memory_gb=256.0, hs23_per_core=20.0)
    g = group(jobs=64, walltime_hours=2.0)
    valued = PlanningConstraints(now=NOW, allocation_hour_value={alloc.id: Decimal("2.56")})
    item = only_item(plan([g], [alloc], (), valued))
    assert item.cost == 0  # nobody is billed for allocation hours
    # 2.56 USD per node-hour over 64 jobs × 1 core × 20 HS23 per hour
    assert float(item.cost_per_hs23_hour.allocation_value) == pytest.approx(0.002, rel=1e-6)


def test_expiring_allocation_beats_a_cheap_cloud_offering_but_a_scarce_one_does_not() -> None:
    alloc = allocation_offering(cores=16, memory_gb=64.0, hs23_per_core=15.0)
    cloud = offering("m", price="0.40", hs23_per_core=15.0)
    g = group(jobs=16)
    free = plan(
        [g], [alloc, cloud], (), PlanningConstraints(now=NOW, allocation_hour_value={alloc.id: Decimal(0)})
    )
    scarce = plan(
        [g], [alloc, cloud], (), PlanningConstraints(now=NOW, allocation_hour_value={alloc.id: Decimal(5)})
    )
    assert only_item(free).offering_id == alloc.id
    assert only_item(scarce).offering_id == cloud.id


def test_startup_is_paid_idle_amortised_over_the_units_run() -> None:
    o = offering("m", price="3.60", startup_seconds=360, hs23_per_core=10.0, cores=1, memory_gb=4.0)
    g = group(jobs=1, walltime_hours=1.0)
    item = only_item(plan([g], [o], (), PlanningConstraints(now=NOW)))
    # one job of 1 core × 1 h × 10 HS23 = 10 HS23-hours; 0.1 h of start-up at 3.60 USD/h = 0.36 USD
    assert float(item.cost_per_hs23_hour.startup) == pytest.approx(0.036, rel=1e-6)
    assert item.cost == Decimal("3.960000")


@pytest.mark.parametrize(
    ("gb", "used", "expected"),
    [
        (5.0, 0.0, "0.5"),  # all in the first tier
        (10.0, 5.0, "0.75"),  # 5 GB at 0.10, 5 GB at 0.05
        (200.0, 0.0, "6.5"),  # 10 × 0.10 + 90 × 0.05 + 100 × 0.01
        (50.0, 150.0, "0.5"),  # already beyond every edge
    ],
)
def test_marginal_egress_prices_each_gb_at_its_tier(gb: float, used: float, expected: str) -> None:
    assert marginal_egress_cost(gb, used, TIERS) == Decimal(expected)
    assert marginal_egress_cost_float(gb, used, TIERS) == pytest.approx(float(expected))


def test_plan_prices_input_and_output_egress_on_marginal_tiers_from_what_was_used() -> None:
    far = offering("m", region="us-west-2", price="0.80")
    g = group(jobs=10, data_location="onprem:cern", input_gb_per_job=2.0, output_gb_per_job=0.5)
    constraints = PlanningConstraints(
        now=NOW,
        egress_routes=(
            EgressRoute("onprem:cern", "*", TIERS),
            EgressRoute("aws:us-west-2", "onprem:cern", TIERS),
        ),
        egress_used_gb={"onprem:cern": 5.0},
    )
    item = only_item(plan([g], [far], (), constraints))
    # input: 20 GB from 5 GB used = 5 × 0.10 + 15 × 0.05 = 1.25; output: 5 GB from 0 = 0.50
    compute = 0.80 * item.hours * item.units  # hours include the 2 minutes of start-up
    assert float(item.cost) - compute == pytest.approx(1.75, abs=1e-5)
    assert float(item.cost_per_hs23_hour.egress) == pytest.approx(1.75 / (10 * 40.0), rel=1e-6)


def test_same_location_data_is_free_and_wins_over_a_cheaper_far_region() -> None:
    near = offering("m", region="us-east-1", price="0.80")
    far = offering("m", region="us-west-2", price="0.70")
    g = group(jobs=16, data_location="aws:us-east-1", input_gb_per_job=20.0)
    constraints = PlanningConstraints(now=NOW, egress_routes=(EgressRoute("aws:us-east-1", "*", TIERS),))
    item = only_item(plan([g], [near, far], (), constraints))
    assert item.offering_id == near.id
    assert item.cost_per_hs23_hour.egress == 0


def test_budget_is_checked_on_money_not_allocation_value() -> None:
    alloc = allocation_offering(cores=16, memory_gb=64.0)
    g = group(jobs=16)
    constraints = PlanningConstraints(
        now=NOW,
        allocation_hour_value={alloc.id: Decimal(1)},
        experiments={"atlas": ExperimentLimits("atlas", budget_remaining=Decimal(0))},
    )
    assert only_item(plan([g], [alloc], (), constraints)).jobs == 16


def test_arm_capable_group_takes_the_cheaper_arm_offering() -> None:
    x86 = offering("m7i", price="0.80")
    arm = offering("m7g", price="0.60", arch=Arch.ARM64)
    g = group(archs=frozenset({Arch.X86_64, Arch.ARM64}), jobs=16)
    assert only_item(plan([g], [x86, arm], (), PlanningConstraints(now=NOW))).offering_id == arm.id


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_shapes_interruption_factors_by_distinct_pair_are_those_of_every_offering_to_the_bit(
    seed: int,
) -> None:
    """`base_total` computes the factors once per distinct (rate, HS23 per core), and the rest once per profile
    (`cols.profiles`), and gathers them: the same bits as computing them offering by offering (plans must
    not depend on how the catalog is laid out)."""
    inst = random_instance(seed, groups=6, offerings=4, fleet=0)  # its groups, on the bundled catalog
    cols = OfferingColumns.from_offerings(load_catalog().offerings)
    assert 0 < 100 * len(cols.risk.rate) < len(cols.risk.offerings)  # 76 pairs for 18,678 offerings
    assert 0 < 100 * len(cols.profiles.pair) < len(cols)  # 191 profiles for 39,404 offerings
    ctx = PlanContext.build(cols, inst.constraints)
    for g in inst.groups:
        jpu = jobs_per_unit(g, cols)
        total, by_profile = base_total(g, jpu, cols, ctx)
        run = g.walltime_hours * g.reference_hs23_per_core / cols.hs23_per_core
        factor = interruption_factor(cols.interruption, run)
        wave_hours = run * factor
        assert np.array_equal(by_profile[cols.profiles.of], wave_hours)
        # the shape's maths written out offering by offering, as `base_total` was before profiles
        with np.errstate(divide="ignore", invalid="ignore"):
            waves = np.maximum(1.0, np.floor(ctx.window_hours(g) / wave_hours))
            per_job = factor / (max(g.cores_per_job, 1) * cols.hs23_per_core)
            per_job += cols.startup_hours / (waves * g.hs23_hours_per_job)
            each = ctx.paid / jpu * per_job
        each[jpu <= 0] = np.inf
        assert np.array_equal(total, each)
        # costing and pricing gather the shape's factors too: the same costs as computing each offering's
        idx = np.flatnonzero(jpu > 0)
        gathered = group_costs(g, idx, jpu, None, cols, ctx, risk_factors(g, cols))
        assert np.array_equal(gathered.data, group_costs(g, idx, jpu, None, cols, ctx).data, equal_nan=True)

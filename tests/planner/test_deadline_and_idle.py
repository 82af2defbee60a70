"""A deadline sooner than the horizon forces parallel units; idle units are drained only after the grace."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from provisioner.domain import DrainReason, FleetUnit, Market, PlanningConstraints, ResourceState
from provisioner.planner import plan
from tests.planner.factories import NOW, group, offering


def _units(p) -> int:  # type: ignore[no-untyped-def]
    return sum(i.units for i in p.items)


def test_deadline_one_wave_away_runs_every_job_at_once() -> None:
    # 64 jobs of 8 cores for 6 h at reference speed; a 16-core unit at 10 HS23/core runs 2 at a time.
    offers = [offering("m.4xlarge", cores=16, memory_gb=64, hs23_per_core=10.0, price="0.80")]
    constraints = PlanningConstraints(now=NOW, horizon_hours=24)
    relaxed = plan([group("g", jobs=64, cores_per_job=8, walltime_hours=6)], offers, (), constraints)
    hurried = plan(
        [group("g", jobs=64, cores_per_job=8, walltime_hours=6, deadline=NOW + timedelta(hours=7))],
        offers,
        (),
        constraints,
    )
    assert _units(relaxed) == 8  # four waves of 6 h in the 24 h horizon: the cheapest, fewest units
    assert _units(hurried) == 32  # one wave before the deadline: all 64 jobs side by side
    assert sum(i.jobs for i in hurried.items) == 64


def test_idle_unit_is_kept_until_the_idle_grace_has_passed() -> None:
    offers = [offering("m.large", price="0.10")]
    fresh = FleetUnit(
        "r1",
        offers[0].id,
        "g",
        "atlas",
        ResourceState.RUNNING,
        busy=False,
        idle_hours=0.05,
        price_per_hour=Decimal("0.10"),
    )
    stale = FleetUnit(
        "r2",
        offers[0].id,
        "g",
        "atlas",
        ResourceState.RUNNING,
        busy=False,
        idle_hours=0.5,
        price_per_hour=Decimal("0.10"),
    )
    constraints = PlanningConstraints(now=NOW, idle_drain_hours=0.25)
    result = plan([group("g", jobs=4)], offers, [fresh, stale], constraints)
    drained = {d.resource_id: d.reason for d in result.drains}
    assert drained == {"r2": DrainReason.IDLE}


def test_paid_units_of_an_experiment_out_of_budget_are_drained_free_ones_kept() -> None:
    from provisioner.domain import ExperimentLimits

    vm = offering("m.large", price="0.10")
    pilot = offering("node", price="0", market=Market.ALLOCATION, provider="slurm", region="desy")
    units = [
        FleetUnit(
            "vm", vm.id, "g", "atlas", ResourceState.RUNNING, busy=True, price_per_hour=Decimal("0.10")
        ),
        FleetUnit(
            "pilot", pilot.id, "g", "atlas", ResourceState.RUNNING, busy=True, price_per_hour=Decimal(0)
        ),
        FleetUnit(
            "other", vm.id, "h", "lsst", ResourceState.RUNNING, busy=True, price_per_hour=Decimal("0.10")
        ),
    ]
    constraints = PlanningConstraints(
        now=NOW,
        experiments={
            "atlas": ExperimentLimits("atlas", budget_remaining=Decimal(0)),
            "lsst": ExperimentLimits("lsst", budget_remaining=Decimal(100)),
        },
    )
    result = plan(
        [group("g", jobs=4), group("h", experiment="lsst", jobs=4)], [vm, pilot], units, constraints
    )
    assert {d.resource_id: d.reason for d in result.drains} == {"vm": DrainReason.OVER_BUDGET}
    assert not [i for i in result.items if i.group_id == "g"]  # and nothing new for atlas

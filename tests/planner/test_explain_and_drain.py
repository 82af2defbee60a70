"""Explanations (chosen, rejected with reasons, unserved) and what the planner does with the running fleet."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from provisioner.domain import (
    Arch,
    DrainReason,
    ExperimentLimits,
    FleetUnit,
    Market,
    PlanningConstraints,
    RejectReason,
    ResourceState,
)
from provisioner.planner import plan
from tests.planner.factories import NOW, allocation_offering, group, offering


def explanation(p, group_id: str):  # type: ignore[no-untyped-def]
    return next(e for e in p.explanations if e.group_id == group_id)


def test_cheaper_arm_offering_is_rejected_for_an_x86_only_group_as_wrong_architecture() -> None:
    x86 = offering("m7i.4xlarge", price="0.80")
    arm = offering("m7g.4xlarge", price="0.56", arch=Arch.ARM64)
    p = plan([group(jobs=32)], [x86, arm], (), PlanningConstraints(now=NOW))
    e = explanation(p, "g")
    assert [it.offering_id for it in e.chosen] == [x86.id]
    first = e.rejected[0]
    assert first.offering_id == arm.id
    assert first.reason is RejectReason.WRONG_ARCH
    assert "30% cheaper" in first.detail and "x86_64" in first.detail
    assert first.cost_per_hs23_hour is not None
    assert first.cost_per_hs23_hour < e.chosen[0].cost_per_hs23_hour.total


def test_explanation_lists_binding_limits_and_dearer_alternatives() -> None:
    cheap = offering("c7i", price="0.50", capacity_units=1, family="aws:c7i")
    mid = offering("m7i", price="0.80", family="aws:m7i")
    dear = offering("r7i", price="1.20", family="aws:r7i")
    p = plan([group(jobs=200)], [cheap, mid, dear], (), PlanningConstraints(now=NOW))
    e = explanation(p, "g")
    assert {it.offering_id for it in e.chosen} == {cheap.id, mid.id}
    reasons = {r.offering_id: r.reason for r in e.rejected}
    assert reasons[dear.id] is RejectReason.MORE_EXPENSIVE
    assert e.unserved_jobs == 0


def test_unserved_jobs_name_the_binding_budget() -> None:
    o = offering("m7i", price="0.80")
    limits = {"atlas": ExperimentLimits("atlas", budget_remaining=Decimal("5"))}
    p = plan([group(jobs=1000)], [o], (), PlanningConstraints(now=NOW, experiments=limits))
    e = explanation(p, "g")
    assert e.unserved_jobs > 0
    assert e.unserved_reason is RejectReason.OVER_BUDGET
    assert p.total_cost <= Decimal("5")


def test_group_with_no_usable_offering_explains_why() -> None:
    small = offering("t3", cores=2, memory_gb=4.0)
    p = plan([group(cores_per_job=8, jobs=3)], [small], (), PlanningConstraints(now=NOW))
    e = explanation(p, "g")
    assert not p.items and e.unserved_jobs == 3
    assert e.unserved_reason is RejectReason.CORES
    assert e.rejected and e.rejected[0].reason is RejectReason.CORES


def test_priority_decides_who_gets_a_binding_spend_rate_cap() -> None:
    o = offering("m7i", price="1.00", cores=4, memory_gb=16.0)
    low = group("low", jobs=40, priority=0, walltime_hours=24.0)
    high = group("high", experiment="cms", jobs=40, priority=20, walltime_hours=24.0)
    p = plan([low, high], [o], (), PlanningConstraints(now=NOW, spend_rate_cap_per_hour=Decimal(5)))
    served = {it.group_id: it.jobs for it in p.items}
    assert served.get("high") == 20 and served.get("low", 0) == 0
    assert explanation(p, "low").unserved_reason is RejectReason.SPEND_RATE


def test_backfill_only_takes_preemptible_work() -> None:
    backfill = offering("idle", price="0", market=Market.BACKFILL, provider="backfill", region="desy")
    cloud = offering("m7i", price="0.80")
    p = plan(
        [group("std", jobs=16), group("pre", jobs=16, preemptible=True)],
        [backfill, cloud],
        (),
        PlanningConstraints(now=NOW),
    )
    chosen = {it.group_id: it.offering_id for it in p.items}
    assert chosen == {"std": cloud.id, "pre": backfill.id}
    std = explanation(p, "std")
    assert any(
        r.offering_id == backfill.id and r.reason is RejectReason.NOT_PREEMPTIBLE for r in std.rejected
    )


def unit(resource_id: str, offering_id: str, **kw) -> FleetUnit:  # type: ignore[no-untyped-def]
    kw.setdefault("state", ResourceState.RUNNING)
    kw.setdefault("busy", True)
    kw.setdefault("group_id", "g")
    kw.setdefault("experiment", "atlas")
    return FleetUnit(resource_id=resource_id, offering_id=offering_id, **kw)


def test_idle_units_are_drained_no_jobs_no_cost() -> None:
    o = offering("m7i")
    fleet = [unit("r1", o.id, busy=False, idle_hours=0.3), unit("r2", o.id, busy=True)]
    p = plan([group(jobs=0)], [o], fleet, PlanningConstraints(now=NOW))
    drains = {d.resource_id: d.reason for d in p.drains}
    assert drains["r1"] is DrainReason.IDLE
    assert not p.items and p.total_cost == 0


def test_units_of_a_group_without_demand_drain_free_hpc_pilots_too() -> None:
    cloud = offering("m7i")
    alloc = allocation_offering()
    fleet = [
        unit("vm", cloud.id, group_id="gone", price_per_hour=Decimal("0.80")),
        unit("pilot", alloc.id, group_id="gone", walltime_left_hours=10.0),  # burns allocation hours
        unit("old-pilot", alloc.id, group_id="gone", walltime_left_hours=0.0),
    ]
    p = plan([group(jobs=0)], [cloud, alloc], fleet, PlanningConstraints(now=NOW))
    drains = {d.resource_id: d.reason for d in p.drains}
    assert drains == {
        "vm": DrainReason.NO_DEMAND,
        "pilot": DrainReason.NO_DEMAND,
        "old-pilot": DrainReason.NO_DEMAND,
    }


def test_pilots_queued_near_the_end_of_their_allocation_drain_as_allocation_ending() -> None:
    alloc = allocation_offering()
    info = alloc.allocation
    assert info is not None
    g = group(jobs=100)
    fleet = [
        unit("queued", alloc.id, group_id=g.id, state=ResourceState.PROVISIONING),
        unit("running", alloc.id, group_id=g.id, busy=True),
    ]
    near_end = info.ends - timedelta(seconds=alloc.startup_seconds)  # within twice the start-up time
    p = plan([g], [alloc], fleet, PlanningConstraints(now=near_end))
    assert {d.resource_id: d.reason for d in p.drains} == {"queued": DrainReason.ALLOCATION_ENDING}
    after = plan([g], [alloc], fleet, PlanningConstraints(now=info.ends + timedelta(minutes=1)))
    assert {d.resource_id: d.reason for d in after.drains} == {
        "queued": DrainReason.ALLOCATION_ENDING,
        "running": DrainReason.ALLOCATION_ENDING,
    }
    early = plan([g], [alloc], fleet, PlanningConstraints(now=info.ends - timedelta(days=1)))
    assert not early.drains


def test_busy_fleet_covers_pending_jobs_so_no_new_units_start() -> None:
    o = offering("m7i", cores=16, memory_gb=64.0, hs23_per_core=10.0)
    g = group(jobs=40, walltime_hours=4.0)  # a busy unit runs 16 jobs a wave, 5 more waves in 24 h
    fleet = [unit("r1", o.id, price_per_hour=Decimal("0.80"))]
    p = plan([g], [o], fleet, PlanningConstraints(now=NOW))
    assert not p.items
    assert "covers" in explanation(p, "g").note
    more = plan([group(jobs=200, walltime_hours=4.0)], [o], fleet, PlanningConstraints(now=NOW))
    assert sum(it.jobs for it in more.items) == 200 - 16 * 5


def test_fleet_counts_against_spend_rate_and_quota() -> None:
    o = offering("m7i", price="1.00", cores=16, family="aws:m7i")
    fleet = [unit(f"r{k}", o.id, group_id="other", price_per_hour=Decimal(1)) for k in range(3)]
    busy_other = group("other", jobs=1000, walltime_hours=4.0)
    g = group(jobs=1000, walltime_hours=20.0)
    capped = PlanningConstraints(now=NOW, spend_rate_cap_per_hour=Decimal(5))
    p = plan([g, busy_other], [o], fleet, capped)
    assert sum(it.units for it in p.items) == 2
    quota = PlanningConstraints(now=NOW, family_quota_cores={"aws:m7i": 64})
    p = plan([g, busy_other], [o], fleet, quota)
    assert sum(it.units for it in p.items) == 1


def test_no_jobs_no_plan_no_cost() -> None:
    p = plan([], [offering("m7i")], (), PlanningConstraints(now=NOW))
    assert p.items == () and p.total_cost == 0 and p.spend_rate_per_hour == 0
    p = plan([group(jobs=0)], [offering("m7i")], (), PlanningConstraints(now=NOW))
    assert p.items == () and p.total_cost == 0


def test_even_pacing_caps_allocation_node_hours_this_round() -> None:
    import dataclasses

    from provisioner.domain import Pacing

    base = allocation_offering(node_hours_left=100.0, ends_in_days=10.0, cores=16, memory_gb=64.0)
    assert base.allocation is not None and base.allocation.pacing is Pacing.EVEN
    # 40-day grant of 100 node-hours, 30 days gone, 75 used: exactly on the even-burn line.
    alloc = dataclasses.replace(base, allocation=dataclasses.replace(base.allocation, node_hours_used=75.0))
    g = group(jobs=10_000, walltime_hours=2.0)
    p = plan([g], [alloc], (), PlanningConstraints(now=NOW, horizon_hours=48.0))
    used = sum(it.units * it.hours for it in p.items)
    on_pace = 100.0 * 31 / 40 - 75.0  # the even-burn target half a horizon (a day) ahead, less what is booked
    assert 0 < used <= on_pace + 1e-9
    e = explanation(p, "g")
    assert e.unserved_jobs > 0 and e.unserved_reason is RejectReason.ALLOCATION_PACED


def test_circuit_broken_offering_and_missed_deadline_are_not_used() -> None:
    from datetime import timedelta

    broken = offering("c7i", price="0.50")
    slow = offering("t3", price="0.60", hs23_per_core=5.0)  # runs a 4 h job in 8 h
    fine = offering("m7i", price="0.90")
    g = group(jobs=16, deadline=NOW + timedelta(hours=6))
    constraints = PlanningConstraints(now=NOW, unavailable_offerings=frozenset({broken.id}))
    p = plan([g], [broken, slow, fine], (), constraints)
    assert {it.offering_id for it in p.items} == {fine.id}
    reasons = {r.offering_id: r.reason for r in explanation(p, "g").rejected}
    assert reasons[broken.id] is RejectReason.UNAVAILABLE
    assert reasons[slow.id] is RejectReason.DEADLINE

"""The independent reference (benchmarks/reference_milp.py) and plan checker (benchmarks/plan_check.py) against the planner.

Hypothesis invariants on random instances (no running fleet, no cost caps: what the reference models):
the planner's plans never break a hard limit nor use an incompatible offering, as re-priced by the
checker; the reference's dominance pruning never changes its optimum; and no planner path serves
more value than the reference proves possible.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks.plan_check import Usage, check_plan
from benchmarks.reference_milp import solve_reference
from benchmarks.reference_rules import Catalog
from provisioner.planner import plan
from tests.planner.instances import Instance, random_instance

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _instance(seed: int, groups: int = 4, offerings: int = 12) -> Instance:
    inst = random_instance(seed, groups=groups, offerings=offerings, fleet=0)
    return replace(inst, groups=[replace(g, max_cost_per_hs23_hour=None) for g in inst.groups])


def _usages(p: object) -> list[Usage]:
    return [Usage(i.group_id, i.offering_id, i.units, i.jobs, float(i.cost)) for i in p.items]  # type: ignore[attr-defined]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, method=st.sampled_from(["auto", "lp", "milp"]))
@example(seed=1113, method="auto")  # HiGHS's -1e-7 jobs floored to -1: 11 jobs planned for a group of 10
def test_plans_never_break_a_hard_limit_nor_use_an_incompatible_offering_as_the_checker_prices_them(
    seed: int, method: str
) -> None:
    inst = _instance(seed, groups=6, offerings=16)
    p = plan(inst.groups, inst.offerings, (), inst.constraints, method=method)
    check = check_plan(inst.groups, Catalog(inst.offerings, inst.constraints), inst.constraints, _usages(p))
    assert check.violations == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds)
@example(seed=69)  # free offerings only: the two optima differed by 145 units × the 1e-7 tie-breaker
def test_reference_dominance_pruning_never_changes_the_optimum(seed: int) -> None:
    inst = _instance(seed)
    cat = Catalog(inst.offerings, inst.constraints)
    pruned = solve_reference(inst.groups, inst.offerings, inst.constraints, catalog=cat, time_limit=30)
    every = solve_reference(
        inst.groups, inst.offerings, inst.constraints, catalog=cat, time_limit=30, prune=False
    )
    assert pruned.status == every.status == "optimal"
    assert abs(pruned.value - every.value) <= 1e-6 * max(1.0, every.value)
    # money must agree; the per-unit tie-breaker (UNIT_EPSILON, 1e-7 USD) is at the scale of HiGHS's tolerances, so
    # a run of free offerings may start more units in one model than the other: a hundredth of a cent
    assert abs(pruned.cost - every.cost) <= 1e-6 * max(1.0, every.cost) + 1e-4


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds)
def test_reference_plans_pass_the_checker_and_no_planner_path_serves_more(seed: int) -> None:
    inst = _instance(seed)
    cat = Catalog(inst.offerings, inst.constraints)
    ref = solve_reference(inst.groups, inst.offerings, inst.constraints, catalog=cat, time_limit=30)
    ref_check = check_plan(
        inst.groups,
        cat,
        inst.constraints,
        [Usage(a.group_id, a.offering_id, a.units, a.jobs, None, a.unit_waves) for a in ref.assignments],
    )
    assert ref_check.violations == []
    assert abs(ref_check.value - ref.value) <= 1e-6 * max(1.0, ref.value)
    for method in ("auto", "lp"):
        p = plan(inst.groups, inst.offerings, (), inst.constraints, method=method)
        served = check_plan(inst.groups, cat, inst.constraints, _usages(p)).value
        assert served <= ref.value_bound * (1 + 1e-6) + 1e-6


def test_the_checker_flags_an_incompatible_offering_and_a_broken_budget() -> None:
    from decimal import Decimal

    from provisioner.domain import Arch, ExperimentLimits, PlanningConstraints
    from tests.planner.factories import NOW, group, offering

    arm = offering("c7g.large", cores=2, memory_gb=4.0, price="0.50", arch=Arch.ARM64)
    x86 = offering("c7a.large", cores=2, memory_gb=4.0, price="0.50")
    g = group("g", jobs=4, cores_per_job=2, memory_gb_per_job=2.0, walltime_hours=1.0)
    constraints = PlanningConstraints(
        experiments={"atlas": ExperimentLimits("atlas", budget_remaining=Decimal("0.60"))}, now=NOW
    )
    cat = Catalog([arm, x86], constraints)
    wrong_arch = check_plan([g], cat, constraints, [Usage("g", arm.id, 1, 1)])
    assert any("incompatible" in v for v in wrong_arch.violations)
    over_budget = check_plan([g], cat, constraints, [Usage("g", x86.id, 4, 4)])
    assert any("over budget" in v for v in over_budget.violations)
    fits = check_plan([g], cat, constraints, [Usage("g", x86.id, 1, 1)])
    assert fits.violations == []

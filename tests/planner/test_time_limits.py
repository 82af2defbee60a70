"""A time limit on the MILP degrades to an incumbent or the repaired LP, never an exception."""

from __future__ import annotations

from provisioner.planner import plan
from tests.planner.instances import random_instance
from tests.planner.test_properties import check_plan


def test_forced_milp_out_of_time_still_plans_within_every_limit_and_says_how() -> None:
    inst = random_instance(7, groups=120, offerings=80, fleet=6)
    p = plan(inst.groups, inst.offerings, inst.fleet, inst.constraints, method="milp", time_limit=1e-6)
    check_plan(inst, p)
    assert p.solver.startswith(("pruned-milp", "pruned-lp"))
    assert p.solver == "pruned-milp" or "time limit" in p.solver
    assert p.items  # something is served: the repaired LP when the MILP had no incumbent


def test_exact_milp_out_of_time_returns_a_feasible_plan_labelled_as_such() -> None:
    inst = random_instance(11, groups=60, offerings=60, fleet=0)
    p = plan(inst.groups, inst.offerings, inst.fleet, inst.constraints, method="exact", time_limit=1e-6)
    check_plan(inst, p)
    assert p.solver == "exact-milp" or "time limit" in p.solver

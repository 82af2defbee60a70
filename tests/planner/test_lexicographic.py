"""The planner's lexicographic MILP (a highspy model per phase, run in the guard process of
`planner/deadline.py` when it has a time limit) must reach the optima scipy's own HiGHS build finds
solving each phase from scratch (as much value, at no more cost): the independent check that caught
HiGHS 1.16 returning a start point as optimal with another point's objective, and the cost phase giving
up value its tolerance allowed."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from provisioner.planner.problem import (
    UNIT_EPSILON,
    constraint_matrix,
    solve_lexicographic,
    variable_bounds,
)
from tests.planner.test_jobs_lp import _problem

GAP = 1e-7
REFERENCE = {"mip_rel_gap": GAP}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
@example(seed=995)  # the cost phase gave up 5 % of the value its tolerance of half a job's value allowed
@example(seed=276)  # HiGHS's presolve called the cost phase infeasible, though the value phase's point is not
@example(seed=1535)  # the reference's value phase stopped at 3.25 where the planner's serves 4.0
@example(seed=2862)
def test_both_phases_reach_what_cold_solves_reach(seed: int) -> None:
    problem = _problem(seed)
    if problem.pairs == 0:
        return
    p = problem.pairs
    got = solve_lexicographic(problem, integral=True, gap=GAP)
    assert got.status == "optimal"
    a, ub = constraint_matrix(problem)
    bounds = Bounds(*variable_bounds(problem))
    value = problem.value[problem.pair_group]
    ones = np.ones(3 * p)
    c1 = np.concatenate([np.zeros(2 * p), -value])
    first = milp(
        c1,
        integrality=ones,
        bounds=bounds,
        constraints=LinearConstraint(a, -np.inf, ub),
        options=REFERENCE,
    )
    assert first.status == 0
    served = float(value @ got.y)
    # at least as much: HiGHS's presolve in scipy's build too can stop short of the optimum (seed 1535)
    assert served >= -first.fun - 1e-6 * max(1.0, served)
    # the cost phase at the value the planner served, as solve_lexicographic asks it
    tolerance = served * 1e-9
    c2 = np.concatenate(
        [problem.objective_start + UNIT_EPSILON, problem.objective_wave, problem.egress_usd_job]
    )
    a2 = sp.vstack([a, sp.csr_matrix(c1)])
    second = milp(
        c2,
        integrality=ones,
        bounds=bounds,
        constraints=LinearConstraint(a2, -np.inf, np.append(ub, -(served - tolerance))),
        options=REFERENCE,
    )
    if second.status == 2:  # "infeasible" from presolve, though the planner's point is feasible (seed 276)
        second = milp(
            c2,
            integrality=ones,
            bounds=bounds,
            constraints=LinearConstraint(a2, -np.inf, np.append(ub, -(served - tolerance))),
            options={**REFERENCE, "presolve": False},
        )
    assert second.status == 0
    cost = float(c2 @ np.concatenate([got.x, got.z, got.y]))
    # no dearer (seed 2862: the reference's own cost phase stopped at 83.76 where the planner's point, which
    # keeps every limit, costs 28.03)
    assert cost <= second.fun + 1e-5 * max(1.0, abs(second.fun)), (cost, second.fun)
    # and the point keeps every limit
    assert (a @ np.concatenate([got.x, got.z, got.y]) <= ub + 1e-6 * np.maximum(1.0, np.abs(ub))).all()

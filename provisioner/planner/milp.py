"""The exact reference: the same instance, objective and limits as the fast planner, with every compatible offering, solved to optimality by HiGHS."""

from __future__ import annotations

from provisioner.planner.problem import Problem, Solution, solve_lexicographic
from provisioner.planner.solve import integral_solution

EXACT_GAP = 1e-9


def solve_exact(problem: Problem, time_limit: float | None = None) -> Solution:
    """`problem` should be built without pruning (`top_k=None`); HiGHS proves optimality within EXACT_GAP."""
    r = solve_lexicographic(problem, integral=True, time_limit=time_limit, gap=EXACT_GAP)
    method = {
        "optimal": "exact-milp",
        "incumbent": "exact-milp (incumbent at time limit)",
        "none": "exact-milp (no incumbent at time limit: nothing planned)",
    }[r.status]
    return integral_solution(problem, r.x, r.z, r.y, method)

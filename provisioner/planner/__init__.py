"""The planner: pure, synchronous; turns demand groups, offerings, the fleet and constraints into a `Plan`.

Read `cost.py` for the objective (USD per HS23-hour of useful work), `problem.py` for the
MILP and its limits, `candidates.py` and `pricing.py` for the shortlists (column generation over the
whole catalog), `solve.py` for the fast planner, `milp.py` for the exact reference,
`drain.py` for what happens to the running fleet and `explain.py` for the explanations.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence
from decimal import Decimal

from provisioner.domain import (
    DemandGroup,
    FleetUnit,
    GroupExplanation,
    Offering,
    Plan,
    PlanItem,
    PlanningConstraints,
)
from provisioner.planner.candidates import build_candidates
from provisioner.planner.columns import HasOfferings, OfferingColumns, as_columns
from provisioner.planner.compatibility import CompatContext
from provisioner.planner.cost import PlanContext
from provisioner.planner.drain import assess_fleet
from provisioner.planner.explain import explain_group, explain_quiet, limits_after
from provisioner.planner.limits import Limits, build_limits
from provisioner.planner.milp import solve_exact
from provisioner.planner.pricing import ColumnGenerator
from provisioner.planner.problem import Problem, Solution, build_problem
from provisioner.planner.settle import Settler
from provisioner.planner.solve import solve

__all__ = ["METHODS", "OfferingColumns", "plan"]

METHODS = ("auto", "milp", "lp", "exact")
Timings = MutableMapping[str, float]


class _Clock:
    def __init__(self, timings: Timings | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + (now - self.last)
        self.last = now


def plan(
    groups: Sequence[DemandGroup],
    offerings: Sequence[Offering] | OfferingColumns | HasOfferings,
    fleet: Sequence[FleetUnit] = (),
    constraints: PlanningConstraints | None = None,
    *,
    method: str = "auto",
    timings: Timings | None = None,
    time_limit: float | None = None,
) -> Plan:
    """Plan one round.

    method: "auto" (fast planner), "milp"/"lp" (force the fast planner's pruned MILP or LP+repair),
    "exact" (the unpruned MILP, for tests and benchmarks). `timings`, if given, receives
    seconds per phase. `time_limit` (seconds per MILP phase; default 2 s for "milp", none for
    "exact"): when it strikes, the plan is the solver's incumbent or the repaired LP, never an
    error, and `Plan.solver` says which.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown planner method {method!r}, expected one of {METHODS}")
    constraints = constraints or PlanningConstraints()
    clock = _Clock(timings)
    cols = as_columns(offerings)
    clock.lap("columns")
    assessment = assess_fleet(
        fleet,
        groups,
        cols,
        constraints.horizon_hours,
        now_ts=constraints.now.timestamp() if constraints.now else None,
        idle_drain_hours=constraints.idle_drain_hours,
        out_of_budget=frozenset(
            name
            for name, lim in constraints.experiments.items()
            if lim.budget_remaining is not None and lim.budget_remaining <= 0
        ),
    )
    demand = [max(0, g.jobs - assessment.covered_jobs.get(g.id, 0)) for g in groups]
    plan_ctx = PlanContext.build(cols, constraints)
    limits = build_limits(groups, cols, constraints, assessment)
    compat = CompatContext.build(cols, constraints, plan_ctx, limits)
    clock.lap("fleet")
    active = [k for k, jobs in enumerate(demand) if jobs > 0]
    candidates = build_candidates(
        [groups[k] for k in active],
        [demand[k] for k in active],
        cols,
        plan_ctx,
        compat,
        top_k=None if method == "exact" else 12,
        timings=timings,
    )
    clock.last = time.perf_counter()
    priced, lp = "", None
    if method == "exact":
        problem = build_problem(candidates, cols, plan_ctx, constraints, limits)
    else:  # the shortlists grown until no offering anywhere in the catalog improves the LP
        generator = ColumnGenerator(cols, plan_ctx, compat, constraints, limits)
        candidates, problem = generator.run(candidates)
        priced = "" if generator.complete else ", catalog pricing cut short"
        lp = generator.lp
    clock.lap("pricing")
    solution: Solution
    if method == "exact":
        solution = solve_exact(problem, time_limit)
    elif time_limit is None:
        solution = solve(problem, method, lp=lp)
    else:
        solution = solve(problem, method, time_limit, lp=lp)
    clock.lap("solve")
    items = Settler(problem, cols, plan_ctx, constraints, assessment).settle(solution)
    clock.lap("settle")
    explanations = _explain(groups, demand, assessment.covered_jobs, problem, cols, items, limits)
    clock.lap("explanation")
    # the new units at their offerings' quoted prices: the plan's estimate, not money spent (billing's)
    spend = sum(
        (cols.offerings[cols.index[it.offering_id]].price_per_hour * it.units for it in items), Decimal(0)
    )
    return Plan(
        items=tuple(items),
        drains=tuple(assessment.drains),
        explanations=tuple(explanations),
        total_cost=sum((it.cost for it in items), Decimal(0)),
        spend_rate_per_hour=spend,
        solver=solution.method + priced,
        objective=_objective(groups, items),
        created_at=constraints.now,
    )


def _objective(groups: Sequence[DemandGroup], items: Sequence[PlanItem]) -> float:
    """The plan's objective cost (USD, money plus allocation value): Σ cost per HS23-hour × HS23-hours."""
    work = {g.id: g.hs23_hours_per_job for g in groups}
    return sum(float(it.cost_per_hs23_hour.total) * it.jobs * work[it.group_id] for it in items)


def _explain(
    groups: Sequence[DemandGroup],
    demand: Sequence[int],
    covered: dict[str, int],
    problem: Problem,
    cols: OfferingColumns,
    items: Sequence[PlanItem],
    limits: Limits,
) -> list[GroupExplanation]:
    left = limits_after(problem, cols, items, limits)
    by_group: dict[str, list[PlanItem]] = {}
    for it in items:
        by_group.setdefault(it.group_id, []).append(it)
    cand_by_id = {c.group.id: c for c in problem.candidates}
    out: list[GroupExplanation] = []
    for group, jobs in zip(groups, demand, strict=True):
        cand = cand_by_id.get(group.id)
        if jobs <= 0 or cand is None:
            out.append(explain_quiet(group, covered.get(group.id, 0)))
        else:
            out.append(explain_group(cand, by_group.get(group.id, []), cols, left))
    return out

"""The planner: pure (the same plan wherever its costing ran), synchronous; turns demand groups, offerings,
the fleet and constraints into a `Plan`.

Read `cost.py` for the objective (USD per HS23-hour of useful work), `problem.py` for the
MILP and its limits, `candidates.py` and `pricing.py` for the shortlists (column generation over the
whole catalog), `jobs_lp.py` for the LP relaxation that pricing and the fast planner solve,
`costing_parts.py` and `workers.py` for the costing split over worker processes, `solve.py` for the
fast planner, `milp.py` for the exact reference, `drain.py` for what happens to
the running fleet and `explain.py` for the explanations.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
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
from provisioner.planner.candidates import BaseCosts, GroupCandidates, shortlist_size
from provisioner.planner.columns import HasOfferings, OfferingColumns, as_columns
from provisioner.planner.compatibility import CompatContext
from provisioner.planner.cost import PlanContext
from provisioner.planner.costing_parts import build_candidates_on
from provisioner.planner.drain import FleetAssessment, assess_fleet
from provisioner.planner.explain import Remaining, explain_group, explain_quiet, limits_after
from provisioner.planner.gc_pause import gc_paused
from provisioner.planner.limits import Limits, build_limits
from provisioner.planner.milp import solve_exact
from provisioner.planner.pricing import ColumnGenerator
from provisioner.planner.problem import UNIT_EPSILON, Problem, Solution, _per_job, build_problem, job_cost
from provisioner.planner.settle import Settler
from provisioner.planner.solve import solve
from provisioner.planner.workers import Workers

__all__ = ["METHODS", "LpBound", "OfferingColumns", "lp_bound", "plan"]

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
    workers: int | Workers = 1,
) -> Plan:
    """Plan one round.

    method: "auto" (fast planner), "milp"/"lp" (force the fast planner's pruned MILP or LP+repair),
    "exact" (the unpruned MILP, for tests and benchmarks). `timings`, if given, receives
    seconds per phase. `time_limit` (seconds per MILP phase; default 2 s for the pruned MILP, 5 s for
    the MILP restricted to the LP's support, none for "exact"): when it strikes, the plan is the
    solver's incumbent or the repaired LP, never an error, and `Plan.solver` says which; where HiGHS
    overruns it, the guard process of `deadline.py` holds it. `workers`: processes the groups' costing
    is split over, and a large LP's two roundings (`workers.py`, `solve.py`; the same plan as with 1):
    a `Workers` the caller keeps keeps its worker processes for the next rounds, a number starts them
    for this plan only. The cyclic garbage collector is held off while it plans (`gc_pause.py`).
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown planner method {method!r}, expected one of {METHODS}")
    with gc_paused():
        return _plan(
            groups,
            offerings,
            fleet,
            constraints or PlanningConstraints(),
            method,
            timings,
            time_limit,
            workers,
        )


def _plan(
    groups: Sequence[DemandGroup],
    offerings: Sequence[Offering] | OfferingColumns | HasOfferings,
    fleet: Sequence[FleetUnit],
    constraints: PlanningConstraints,
    method: str,
    timings: Timings | None,
    time_limit: float | None,
    workers: int | Workers,
) -> Plan:
    clock = _Clock(timings)
    pool = workers if isinstance(workers, Workers) else Workers(workers)
    try:
        setup, problem, solution, priced = _plan_on(
            pool, groups, offerings, fleet, constraints, clock, method, timings, time_limit
        )
    finally:
        if pool is not workers:
            pool.close()
    clock.last = time.perf_counter()  # closing a pool of this plan's own is no phase's time
    cols, assessment = setup.cols, setup.assessment
    items = Settler(problem, cols, setup.plan_ctx, constraints, assessment).settle(solution)
    clock.lap("settle")
    explanations = _explain(groups, setup.demand, assessment.covered_jobs, problem, cols, items, setup.limits)
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


def _plan_on(
    pool: Workers,
    groups: Sequence[DemandGroup],
    offerings: Sequence[Offering] | OfferingColumns | HasOfferings,
    fleet: Sequence[FleetUnit],
    constraints: PlanningConstraints,
    clock: _Clock,
    method: str,
    timings: Timings | None,
    time_limit: float | None,
) -> tuple[_Setup, Problem, Solution, str]:
    """Costing, pricing and solving, on `pool`'s processes: the setup, the problem, its solution and
    what the solver label adds (pricing cut short)."""
    setup = _prepare(
        groups, offerings, fleet, constraints, clock, exact=method == "exact", timings=timings, workers=pool
    )
    clock.last = time.perf_counter()  # costing keeps its own time
    priced, lp = "", None
    if method == "exact":
        problem = build_problem(setup.candidates, setup.cols, setup.plan_ctx, constraints, setup.limits)
    else:  # the shortlists grown until no offering anywhere in the catalog improves the LP
        generator = ColumnGenerator(
            setup.cols, setup.plan_ctx, setup.compat, constraints, setup.limits, bases=setup.bases
        )
        _, problem = generator.run(setup.candidates)
        priced = "" if generator.complete else ", catalog pricing cut short"
        lp = generator.lp
    clock.lap("pricing")
    solution: Solution
    if method == "exact":
        solution = solve_exact(problem, time_limit)
    else:
        solution = solve(problem, method, time_limit, lp=lp, workers=pool)
    clock.lap("solve")
    return setup, problem, solution, priced


@dataclass(frozen=True, slots=True)
class _Setup:
    cols: OfferingColumns
    assessment: FleetAssessment
    demand: list[int]  # per group: pending jobs the running fleet does not already cover
    plan_ctx: PlanContext
    limits: Limits
    compat: CompatContext
    candidates: list[GroupCandidates]  # of the groups with demand left
    bases: BaseCosts  # the costs without egress costing kept (those costed here and those workers sent back)


def _prepare(
    groups: Sequence[DemandGroup],
    offerings: Sequence[Offering] | OfferingColumns | HasOfferings,
    fleet: Sequence[FleetUnit],
    constraints: PlanningConstraints,
    clock: _Clock,
    *,
    exact: bool,
    timings: Timings | None,
    workers: Workers | None = None,
) -> _Setup:
    """What planning and its bound share: the fleet's assessment, the limits it leaves, the shortlists
    (costed in this process alone unless `workers` says otherwise)."""
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
    bases = BaseCosts(cols, plan_ctx)
    clock.lap("fleet")
    active = [k for k, jobs in enumerate(demand) if jobs > 0]
    candidates = build_candidates_on(
        workers or Workers(1),
        [groups[k] for k in active],
        [demand[k] for k in active],
        cols,
        plan_ctx,
        compat,
        top_k=None if exact else shortlist_size(len(active)),
        timings=timings,
        bases=bases,
    )
    return _Setup(cols, assessment, demand, plan_ctx, limits, compat, candidates, bases)


@dataclass(frozen=True, slots=True)
class LpBound:
    """The jobs-only LP relaxation over the whole compatible catalog (column generation run to the end).

    `value` is the most any plan can serve (normalised values, as `job_values`), `cost` the least
    objective cost (money plus allocation value; egress at its floor, the lowest marginal rate left
    on the source's tiers, as what shared tiers charge is not linear) of serving `served`: no
    integral plan serving that much costs less, so (a plan's objective − cost) / cost bounds its gap
    to the optimum from above."""

    value: float
    served: float
    cost: float
    complete: bool  # False: pricing stopped early, the figures are not bounds
    job_values: dict[str, float]  # value per job, per group id


def lp_bound(
    groups: Sequence[DemandGroup],
    offerings: Sequence[Offering] | OfferingColumns | HasOfferings,
    fleet: Sequence[FleetUnit] = (),
    constraints: PlanningConstraints | None = None,
    *,
    served_at_most: float | None = None,
) -> LpBound:
    """A lower bound on the cost of any plan serving `served_at_most` (default: the most possible),
    for benchmarks and diagnostics: unlike `plan`, pricing is not cut short, so it can take long."""
    constraints = constraints or PlanningConstraints()
    setup = _prepare(groups, offerings, fleet, constraints, _Clock(None), exact=False, timings=None)
    generator = ColumnGenerator(
        setup.cols,
        setup.plan_ctx,
        setup.compat,
        constraints,
        setup.limits,
        screen_budget=float("inf"),
        max_rounds=10_000,
        price_capped=True,
        egress_cost=False,
        bases=setup.bases,
    )
    _, problem = generator.run(setup.candidates, served_at_most=served_at_most)
    lp = generator.last
    # without the per-unit tie-breaker of the jobs LP's cost, which plans' objectives leave out
    cost = float((job_cost(problem) - UNIT_EPSILON * _per_job(problem)[1]) @ lp) if lp is not None else 0.0
    served = float(problem.value[problem.pair_group] @ lp) if lp is not None else 0.0
    values = {c.group.id: float(v) for c, v in zip(problem.candidates, problem.value, strict=True)}
    # no usable pair at all: nothing can be served, which the empty plan does at no cost (a bound too)
    solved = lp is not None or problem.pairs == 0
    return LpBound(generator.served, served, cost, generator.complete and solved, values)


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
    left = Remaining.of(limits_after(problem, cols, items, limits), cols)
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

"""The fast planner: HiGHS on the priced shortlists, exactly when they are small, else their LP relaxation rounded.

`candidates.py` shortlists each group's cheapest compatible offerings (spread over quota families)
and `pricing.py` grows the shortlists by column generation until the jobs-only LP over them is
optimal over the whole catalog. A small instance is then solved as the MILP of `problem.py`
(time-limited); a large one as its LP relaxation in jobs only (units = jobs / (jobs per unit ×
waves), one variable per pair), made integral two ways: greedily (groups by value, their offerings
cheapest first, each pair first taking up to the relaxation's jobs in whole units and waves as far
as every limit allows, then any job still unserved going to the cheapest pair with room), and,
unless that is already within CLOSE_ENOUGH of the LP's bounds, by the MILP restricted to the LP's
support; the better plan wins. `benchmarks/planner_gap.py` measures the gap to an independent exact MILP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from provisioner.planner.columns import BoolArray, FloatArray, IntArray
from provisioner.planner.jobs_lp import SERVED_SLACK, least_cost, solve_jobs_lp
from provisioner.planner.problem import (
    SAFETY,
    Problem,
    Solution,
    job_cost,
    solve_lexicographic,
)
from provisioner.planner.workers import Workers

# `auto` solves the pruned MILP up to this many pairs (time-limited, the LP path as its fallback, the
# better plan kept): on the trace instances of benchmarks/planner_gap.py with 300 jobs (550-1,212
# pairs) it takes 0.1-1 s and closes what the LP path's rounding leaves (hpc2n/300/egress: +1.22 % ->
# +0.23 %); with 1,000 jobs (1,376-3,158 pairs) it takes up to 3 s and its incumbent beats the LP path
# (hpc2n/1000/quota: +1.18 % -> +0.20 %, hpc2n/1000/egress: +1.57 % -> +1.24 %, against the
# reference's bound). The 720-group scale instance (8,116 pairs) keeps the LP path: there the MILP
# given 30 s found nothing better than the repaired LP.
MILP_MAX_PAIRS = 4000
MILP_TIME_LIMIT = 2.0
# The MILP restricted to the LP's support gets longer per phase: it runs only on inputs of at most
# RESTRICTED_MAX_PAIRS restricted pairs (the trace instances of benchmarks/planner_gap.py, not the scale
# instances), where at 2 s its first restriction stopped at an incumbent and the wider ones never ran:
# hpc2n/2000/quota cost 441.99 at 2 s, 436.66 at 5 s on a busy machine, against the reference's bound
# of 434.92 (`planner_gap --prove`). Still an incumbent at 5 s: one benchmark run gave `lp` +0.40 % and
# `auto` (the same path there) +1.61 %
RESTRICTED_TIME_LIMIT = 5.0


def solve(
    problem: Problem,
    method: str = "auto",
    time_limit: float | None = None,
    lp: FloatArray | None = None,
    workers: Workers | None = None,
) -> Solution:
    """method: "auto", "milp" (pruned MILP) or "lp" (LP relaxation + rounding + repair).

    `time_limit`: seconds per MILP phase (default: MILP_TIME_LIMIT for the pruned MILP,
    RESTRICTED_TIME_LIMIT for the MILP restricted to the LP's support). A MILP stopped by it returns
    its incumbent, repaired, or the repaired LP when it has none; `Solution.method` says which. `lp`:
    the problem's lexicographic jobs LP when the caller has it already (column generation ends with
    it), else it is solved here. `workers`: the processes a large LP's roundings are repaired on side by
    side (the same plan as in one)."""
    restricted_limit = RESTRICTED_TIME_LIMIT if time_limit is None else time_limit
    if method == "auto":
        method = "milp" if problem.pairs <= MILP_MAX_PAIRS else "lp"
    if method == "milp":
        milp_limit = MILP_TIME_LIMIT if time_limit is None else time_limit
        r = solve_lexicographic(problem, integral=True, time_limit=milp_limit, gap=1e-6)
        if r.status == "none":  # the time limit struck before any integral point: the LP path instead
            return _lp_path(
                problem,
                restricted_limit,
                "pruned-lp (milp time limit, no incumbent)",
                lp,
                whole=False,
                workers=workers,
            )
        if r.status == "optimal":
            return repair(problem, integral_solution(problem, r.x, r.z, r.y, "pruned-milp"))
        # stopped with an incumbent (often far from the least cost when phase 2 was cut short): polish it,
        # then keep it or the LP path's plan, whichever serves more, then costs less
        incumbent = repair(
            problem, integral_solution(problem, r.x, r.z, r.y, "pruned-milp (incumbent at time limit)")
        )
        incumbent = repair(problem, improve(problem, incumbent))
        fallback = _lp_path(
            problem,
            restricted_limit,
            "pruned-lp (milp time limit, better than its incumbent)",
            lp,
            whole=False,
            workers=workers,
        )
        return _best(problem, (incumbent, fallback))
    if method == "lp":
        return _lp_path(problem, restricted_limit, "pruned-lp", lp, workers=workers)
    raise ValueError(f"method: unknown planner method {method!r} (auto, milp or lp)")


# a repaired LP this close to the LP's bounds on value and cost needs no MILP (`close_enough`). Where a
# budget binds, a sliver of value is worth much money: nrel-eagle/1000/budget (benchmarks/planner_gap.py)
# was 0.06 % short of the LP's value and so 1.72 % dearer than the cheapest plan serving as much, within 2e-3
CLOSE_ENOUGH = 1e-4
RESTRICTED_PER_GROUP = 2  # each group's cheapest shortlisted pairs added to the LP's support
# Above this many pairs the restricted MILP does not finish within its time limit and its incumbent
# loses to the repaired LP: on the 720-group scale instance (benchmarks/planner_scale.py, 1,881 pairs)
# it spent 2.9 s for a plan 2 % dearer than the repaired one (15 s got it 0.75 % below). On the trace
# instances of benchmarks/planner_gap.py, where it decides the gap, the narrow restriction has at
# most ~500 pairs and the whole shortlist 550-3,158.
RESTRICTED_MAX_PAIRS = 1500
# While the restricted MILPs serve less than the LP, the widening goes on past a restriction its time limit stopped,
# to the whole shortlist up to this many pairs: value comes first, and the whole shortlist is where the room
# the LP found can be. On nasa-ipsc/6000/quota of benchmarks/planner_gap.py (4,285 pairs) every restriction
# left a 4-job group unserved: the LP path paid 264.58 serving 0.07 % less than the LP, where the reference
# serves as much for 247.70 (`planner_gap --prove`); the whole shortlist's MILP, stopped by its 5 s limit,
# serves all the LP serves for 265.67, within 0.19 % of the reference's bound at that value (2026-12-03)
SHORT_WHOLE_MAX_PAIRS = 5000


def _lp_path(
    problem: Problem,
    time_limit: float,
    label: str,
    lp: FloatArray | None = None,
    *,
    whole: bool = True,
    workers: Workers | None = None,
) -> Solution:
    """The LP relaxation, made integral: repaired greedily, and, unless that is already within
    CLOSE_ENOUGH of the LP's bounds, also by the MILP restricted to the LP's support (plus each
    group's cheapest pairs and the repaired plan's), time-limited; the better plan wins. `whole`
    False: the restriction widens to the whole shortlist, the MILP the pruned MILP path has just run
    out of time on, only while the plans serve less than the LP (the 60 trace instances of
    benchmarks/planner_gap.py took 243 s on `auto` with it always, against 156 s before the fallback
    widened at all; while short, the whole shortlist with the restriction's longer limit is where the
    room the LP found can be: forced `milp` on nasa-ipsc/6000/quota kept the pruned MILP's incumbent,
    +5.39 %, where the whole shortlist serves as much for +0.19 %).

    Rounding a relaxation whose limits bind (budgets worth a few waves, quotas of a few units) is a
    knapsack the greedy repair can miss by a few percent; the restricted MILP is small (about the
    LP's basis) and solves it exactly or nearly so within the limit."""
    if lp is None or len(lp) != problem.pairs:
        lp = solve_jobs_lp(problem)
    repaired = _lp_repair(problem, lp, f"{label}+repair", workers)
    support = (lp > 1e-7) | (repaired.jobs > 0)
    first = support | (problem.pair_slot < RESTRICTED_PER_GROUP)
    if int(first.sum()) > RESTRICTED_MAX_PAIRS or close_enough(problem, lp, repaired):
        return repaired
    plans = [repaired]
    # first the LP's support and each group's cheapest pairs; while that is proven optimal (or the plans
    # serve less than the LP, `SHORT_WHOLE_MAX_PAIRS`), wider: each
    # group's 8 cheapest, then the whole shortlist, as long as it is small enough: the optimum may split
    # a group over pairs the LP left out (trace instances of benchmarks/planner_gap.py: the whole
    # shortlist 1.35 % -> 0.91 % and 1.22 % -> 0.23 %; 8 per group, where the whole shortlist is too
    # large, nasa-ipsc/1000/quota 0.46 % -> 0.20 %)
    # The first restriction is capped at RESTRICTED_MAX_PAIRS; a wider one follows a proven optimum and
    # may take up to MILP_MAX_PAIRS, the size `auto` trusts the MILP with: on hpc2n/1000/quota the LP's
    # support took 0.4 s (512 pairs), then 8 per group (1,769 pairs) was proven in 1.1 s, the whole
    # shortlist (2,854) gave an incumbent, and forced `lp` went from +1.18 % to +0.20 %
    widths = (RESTRICTED_PER_GROUP, 8, None)
    lp_value = float(problem.value[problem.pair_group] @ lp)
    short = False  # the plans so far serve less than the LP: a wider restriction may serve it
    for width in widths:
        if width is None and not (whole or short):
            break
        keep = np.ones(problem.pairs, dtype=bool) if width is None else support | (problem.pair_slot < width)
        most = (
            RESTRICTED_MAX_PAIRS
            if len(plans) == 1
            else SHORT_WHOLE_MAX_PAIRS
            if width is None and short
            else MILP_MAX_PAIRS
        )
        if int(keep.sum()) > most:
            break
        found = _restricted(problem, keep, time_limit, label)
        if found is None:
            break
        solution, proven = found
        plans.append(solution)
        short = _short_of(problem, plans, lp_value)
        # by its status, not its label: a label can say "incumbent" of the MILP before this path (the
        # fallback of a pruned MILP stopped by its time limit is labelled so, and until 2026-12-02 never
        # went past its first restriction: forced `milp` on nasa-ipsc/6000/quota of
        # benchmarks/planner_gap.py paid +6.44 % where the wider restriction gave +0.34 %)
        if bool(keep.all()) or not (proven or short):
            break
    return _best(problem, plans)


def _short_of(problem: Problem, plans: Sequence[Solution], lp_value: float) -> bool:
    """The best of `plans` serves less than the LP's `lp_value`, beyond a tie (`SERVICE_TIE`)."""
    return _best(problem, plans).served_value(problem) < lp_value * (1 - SERVICE_TIE)


def close_enough(problem: Problem, lp: FloatArray, plan: Solution) -> bool:
    """The plan serves within CLOSE_ENOUGH of the LP's value and costs within CLOSE_ENOUGH of the least
    the LP pays to serve as much as the plan does: its own cost phase when the plan serves all the LP
    serves, else the LP's cost phase again at the plan's value. Against the LP's cost at its own value,
    a plan serving a sliver less passed while paying for that sliver's dearest offerings: forced `lp` on
    nrel-eagle/1000/budget (benchmarks/planner_gap.py) served 0.0002 % less than the LP at 1.7 % above
    the least cost of serving that much."""
    lp_value = float(problem.value[problem.pair_group] @ lp)
    served, cost = plan.served_value(problem), plan.objective(problem)
    if served < lp_value * (1 - CLOSE_ENOUGH):
        return False
    least = (
        float(job_cost(problem) @ lp)
        if served >= lp_value * (1 - SERVED_SLACK)
        else least_cost(problem, served)
    )
    return least is not None and cost <= least * (1 + CLOSE_ENOUGH) + 1e-9


def _restricted(
    problem: Problem, keep: BoolArray, time_limit: float, label: str
) -> tuple[Solution, bool] | None:
    """The MILP restricted to the pairs in `keep`, time-limited, mapped back and repaired, and whether it
    was proven optimal (over those pairs); None when the time limit struck before any integral point."""
    sub = problem.restricted(keep)
    r = solve_lexicographic(sub, integral=True, time_limit=time_limit, gap=1e-6)
    if r.status == "none":
        return None
    proven = r.status == "optimal"
    status = "" if proven else " (incumbent at time limit)"
    part = integral_solution(sub, r.x, r.z, r.y, f"{label}+restricted-milp{status}")
    full = [np.zeros(problem.pairs, dtype=np.int64) for _ in range(3)]
    for arr, got in zip(full, (part.units, part.unit_waves, part.jobs), strict=True):
        arr[keep] = got
    found = repair(problem, Solution(full[0], full[1], full[2], part.method))
    if not proven:  # an incumbent cut short in its cost phase: polish it as the MILP path does
        found = repair(problem, improve(problem, found))
    return found, proven


SERVICE_TIE = 1e-4  # plans serving within this share of the most served value count as serving the same


def _best(problem: Problem, plans: Sequence[Solution]) -> Solution:
    """The plan serving the most value, then costing the least; service within SERVICE_TIE of the most
    counts as a tie. Without the tie, a time-limited incumbent serving a sliver more (a float or a job
    of a low-value group) won at twice the cost of a plan serving all but that sliver."""
    most = max(sol.served_value(problem) for sol in plans)
    near = [sol for sol in plans if sol.served_value(problem) >= most * (1 - SERVICE_TIE)]
    return min(near, key=lambda sol: sol.objective(problem))


def _rank(problem: Problem, solution: Solution) -> tuple[float, float]:
    served = solution.served_value(problem)
    return (round(served, 9), -solution.objective(problem))


# From this many pairs the two roundings of `_lp_repair` are repaired side by side when there are worker
# processes: at 5,000 groups (benchmarks/planner_scale.py, 69,619 pairs) each takes 0.2-0.3 s, and the
# problem travels without its candidates (11.7 MB, pickled in 7 ms); at 720 groups (8,116 pairs) the
# roundings take a few hundredths of a second together, and the planner_gap instances may have started
# no worker at all (starting one takes 0.5 s)
PARALLEL_REPAIR_PAIRS = 20_000


def _lp_repair(problem: Problem, lp: FloatArray, label: str, workers: Workers | None = None) -> Solution:
    """The LP relaxation's jobs as targets, rounded down and (separately) up, each repaired and improved;
    the better plan wins. Rounding up keeps a small, valuable group whose LP share is fractional
    (rounding down would drop it while cheaper groups take its room); rounding down avoids starting
    a unit for a sliver of a job. On a large problem, the two roundings run on `workers` side by side."""
    lists = PairLists(problem)
    roundings = [np.floor(lp + 1e-6).astype(np.int64), np.ceil(lp - 1e-6).astype(np.int64)]
    if workers is not None and workers.count > 1 and problem.pairs >= PARALLEL_REPAIR_PAIRS:
        # the groups' candidates stay here: the repair reads only the per-pair arrays and the limits
        thin = replace(problem, candidates=())
        found = workers.map(_rounded, [_Rounding(thin, targets, label, lists) for targets in roundings])
    else:
        found = [_rounded(_Rounding(problem, targets, label, lists)) for targets in roundings]
    best = found[0] if _rank(problem, found[0]) >= _rank(problem, found[1]) else found[1]
    # Going by value decides well who is served, not who gets a scarce cheap offering: rounding up the
    # units of the first groups takes the room the LP gave later ones, which then pay dearer offerings
    # (720-group instance of benchmarks/planner_scale.py: a free pool went to a 266-job group, and two
    # groups of 6,792 and 3,639 jobs paid twice as much). The same jobs per group again, the largest
    # groups first, and the cheaper plan wins (there 1.1 % cheaper; service is kept or it loses).
    served = _jobs_per_group(problem, best.jobs)
    kept = replace(problem, demand=np.minimum(served, problem.demand))
    largest_first = np.lexsort((-problem.value, -served))
    empty = np.zeros(problem.pairs, dtype=np.int64)
    start = Solution(empty, empty.copy(), empty.copy(), label)
    again = repair(kept, start, np.floor(lp + 1e-6).astype(np.int64), largest_first, lists)
    again = repair(kept, again, order=largest_first, lists=lists)  # what the targets left out, same order
    again = repair(problem, improve(problem, again, lists=lists), lists=lists)
    return again if _rank(problem, again) > _rank(problem, best) else best


@dataclass(frozen=True, slots=True)
class _Rounding:
    """One rounding of the LP to repair, here or in a worker."""

    problem: Problem
    targets: IntArray
    label: str
    lists: PairLists | None  # None: built where it runs

    def __reduce__(self) -> tuple[object, ...]:
        # not the lists (40 MB at 5,000 groups): a worker builds its own from the problem faster
        return (_Rounding, (self.problem, self.targets, self.label, None))


def _rounded(rounding: _Rounding) -> Solution:
    """The rounding's targets repaired, the rest filled, improved (which can free room) and filled again."""
    problem, lists = rounding.problem, rounding.lists or PairLists(rounding.problem)
    empty = np.zeros(problem.pairs, dtype=np.int64)
    start = Solution(empty, empty.copy(), empty.copy(), rounding.label)
    solution = repair(problem, start, rounding.targets, lists=lists)
    solution = repair(problem, solution, lists=lists)
    return repair(problem, improve(problem, solution, lists=lists), lists=lists)


def integral_solution(problem: Problem, x: FloatArray, z: FloatArray, y: FloatArray, method: str) -> Solution:
    """A MILP's point as whole units, waves and jobs: each value to its integer within HiGHS's
    integrality tolerance, never below 0 (a variable at its bound of 0 comes back as -1e-7, which
    flooring made -1: a group once showed 11 jobs planned of 10, -1 on another pair), then kept
    consistent (jobs fit their waves, waves their units)."""

    def whole(v: FloatArray) -> IntArray:
        return np.maximum(np.floor(v + INTEGRALITY), 0).astype(np.int64)

    units = whole(x)
    unit_waves = np.minimum(whole(z), problem.waves * units)
    jobs = np.minimum(whole(y), problem.jobs_per_unit * unit_waves)
    # drop units and waves the jobs do not need
    unit_waves = np.minimum(unit_waves, -(-jobs // np.maximum(problem.jobs_per_unit, 1)))
    units = np.minimum(units, -(-unit_waves // np.maximum(problem.waves, 1)))
    return Solution(units, unit_waves, jobs, method)


INTEGRALITY = 1e-6  # HiGHS's mip_feasibility_tolerance: 10.9999995 is 11


class PairLists:
    """The problem's per-pair figures as plain Python lists (scalar access to numpy arrays is slow in
    the repair loops). Built once and passed to each `repair` and `improve` of one rounding: it builds
    a `_Residual` a dozen times, and at 5,000 groups (63,536 pairs) converting these each time took
    0.2 s. Only the per-pair arrays are read, so a problem with another `demand` may share them.
    Not cached beyond the call: at that size they hold about 40 MB."""

    def __init__(self, pr: Problem) -> None:
        self.exp_array = pr.group_exp[pr.pair_group]
        self.p_exp, self.p_offering, self.p_family = (
            self.exp_array.tolist(),
            pr.pair_offering.tolist(),
            pr.family.tolist(),
        )
        self.p_cores, self.p_price, self.p_gpus = pr.cores.tolist(), pr.price.tolist(), pr.gpus.tolist()
        self.p_money_wave, self.p_money_start = pr.money_wave.tolist(), pr.money_start.tolist()
        self.p_egress_usd, self.p_egress_gb = pr.egress_usd_job.tolist(), pr.egress_gb_job.tolist()
        self.p_egress_budget = pr.egress_budget_job.tolist()
        self.p_nh_wave, self.p_nh_start = pr.node_hours_wave.tolist(), pr.node_hours_start.tolist()
        self.p_obj_wave, self.p_obj_start = pr.objective_wave.tolist(), pr.objective_start.tolist()
        self.p_max_cost = pr.max_cost_job.tolist()
        self.jobs_per_unit, self.waves = pr.jobs_per_unit.tolist(), pr.waves.tolist()
        self.starts = np.searchsorted(pr.pair_group, np.arange(len(pr.demand))).tolist()
        self.ends = np.searchsorted(pr.pair_group, np.arange(len(pr.demand)), side="right").tolist()


def _jobs_per_group(problem: Problem, jobs: IntArray) -> IntArray:
    """Jobs planned per group (np.bincount's float sums are exact for any count of jobs)."""
    counts = np.bincount(problem.pair_group, weights=jobs, minlength=len(problem.demand))
    per_group: IntArray = np.rint(counts).astype(np.int64)
    return per_group


def _used(index: IntArray, weights: FloatArray | IntArray, size: int) -> FloatArray:
    """What the pairs use of a limit indexed by `index` (np.bincount: np.subtract.at is 10x slower)."""
    used: FloatArray = np.bincount(index, weights=weights, minlength=size)[:size].astype(np.float64)
    return used


class _Residual:
    """What is left of every limit, tracked while repairing."""

    def __init__(self, problem: Problem, solution: Solution, lists: PairLists | None = None) -> None:
        pr, lim = problem, problem.limits
        lists = lists or PairLists(pr)

        def shrink(v: FloatArray) -> FloatArray:
            return np.where(np.isfinite(v), np.maximum(v, 0) * (1 - SAFETY) - 1e-9, v)

        exp = lists.exp_array
        x, z, y = solution.units, solution.unit_waves, solution.jobs
        n_exp = len(lim.exp_spend)
        capacity = np.floor(np.maximum(lim.capacity, 0) + 1e-9) - _used(
            pr.pair_offering, x, len(lim.capacity)
        )
        quota = np.maximum(lim.quota, 0).astype(np.float64) - _used(pr.family, pr.cores * x, len(lim.quota))
        self.facility = float(shrink(np.array([lim.facility_spend]))[0]) - float(np.sum(pr.price * x))
        spend = shrink(lim.exp_spend) - _used(exp, pr.price * x, n_exp)
        money = pr.money_wave * z + pr.money_start * x + pr.egress_budget_job * y
        budget = shrink(lim.exp_budget) - _used(exp, money, n_exp)
        egress = shrink(lim.exp_egress) - _used(exp, pr.egress_gb_job * y, n_exp)
        gpus = np.maximum(lim.exp_gpus, 0).astype(np.float64) - _used(exp, pr.gpus * x, n_exp)
        node_hours = shrink(lim.node_hours) - _used(
            pr.pair_offering, pr.node_hours_wave * z + pr.node_hours_start * x, len(lim.node_hours)
        )
        self.l_capacity, self.l_quota = capacity.tolist(), quota.tolist()
        self.l_spend, self.l_budget = spend.tolist(), budget.tolist()
        self.l_egress, self.l_gpus, self.l_node_hours = egress.tolist(), gpus.tolist(), node_hours.tolist()
        self.lists = lists
        # the lists again as attributes of their own: `fits` and `take` run ~10^5 times per rounding
        self.p_exp, self.p_offering, self.p_family = lists.p_exp, lists.p_offering, lists.p_family
        self.p_cores, self.p_price, self.p_gpus = lists.p_cores, lists.p_price, lists.p_gpus
        self.p_money_wave, self.p_money_start = lists.p_money_wave, lists.p_money_start
        self.p_egress_usd, self.p_egress_gb = lists.p_egress_usd, lists.p_egress_gb
        self.p_egress_budget = lists.p_egress_budget
        self.p_nh_wave, self.p_nh_start = lists.p_nh_wave, lists.p_nh_start
        self.p_obj_wave, self.p_obj_start = lists.p_obj_wave, lists.p_obj_start
        self.p_max_cost = lists.p_max_cost
        self.l_units, self.l_waves, self.l_jobs = x.tolist(), z.tolist(), y.tolist()

    def fits(self, p: int, dx: int, dz: int, dy: int) -> bool:
        e, o = self.p_exp[p], self.p_offering[p]
        tol = 1e-9
        price = self.p_price[p]
        return (
            dx <= self.l_capacity[o]
            and self.p_cores[p] * dx <= self.l_quota[self.p_family[p]] + tol
            and price * dx <= self.facility + tol
            and price * dx <= self.l_spend[e] + tol
            and self.p_gpus[p] * dx <= self.l_gpus[e] + tol
            and self.p_money_wave[p] * dz + self.p_money_start[p] * dx + self.p_egress_budget[p] * dy
            <= self.l_budget[e] + tol
            and self.p_egress_gb[p] * dy <= self.l_egress[e] + tol
            and self.p_nh_wave[p] * dz + self.p_nh_start[p] * dx <= self.l_node_hours[o] + tol
        )

    def under_cap(self, p: int, dx: int, dz: int, dy: int) -> bool:
        """The pair's cost per HS23-hour, partial waves included, stays under the group's cap."""
        cap = self.p_max_cost[p]
        if cap == math.inf:
            return True
        x, z, y = self.l_units[p] + dx, self.l_waves[p] + dz, self.l_jobs[p] + dy
        cost = self.p_obj_wave[p] * z + self.p_obj_start[p] * x + self.p_egress_usd[p] * y
        return cost <= cap * y * (1 - SAFETY)

    def take(self, p: int, dx: int, dz: int, dy: int) -> None:
        e, o = self.p_exp[p], self.p_offering[p]
        price = self.p_price[p]
        self.l_capacity[o] -= dx
        self.l_quota[self.p_family[p]] -= self.p_cores[p] * dx
        self.facility -= price * dx
        self.l_spend[e] -= price * dx
        self.l_gpus[e] -= self.p_gpus[p] * dx
        self.l_budget[e] -= (
            self.p_money_wave[p] * dz + self.p_money_start[p] * dx + self.p_egress_budget[p] * dy
        )
        self.l_egress[e] -= self.p_egress_gb[p] * dy
        self.l_node_hours[o] -= self.p_nh_wave[p] * dz + self.p_nh_start[p] * dx
        self.l_units[p] += dx
        self.l_waves[p] += dz
        self.l_jobs[p] += dy


def _growth(x: int, z: int, y: int, jpu: int, waves: int, more_jobs: int) -> tuple[int, int, int]:
    """Extra units, unit-waves and jobs needed to run `more_jobs` more jobs on a pair."""
    new_y = y + more_jobs
    new_z = max(z, math.ceil(new_y / jpu))
    new_x = max(x, math.ceil(new_z / waves))
    return new_x - x, new_z - z, more_jobs


def repair(
    problem: Problem,
    solution: Solution,
    targets: IntArray | None = None,
    order: IntArray | None = None,
    lists: PairLists | None = None,
) -> Solution:
    """Greedily give unserved jobs to the cheapest pairs that still fit every limit.

    Groups go by value (or in `order`), their pairs cheapest first; with `targets`, a pair takes at
    most its target (the LP relaxation's jobs), so the relaxation's split between groups and
    offerings is kept."""
    pr = problem
    left = pr.demand - _jobs_per_group(pr, solution.jobs)
    if not np.any(left > 0):
        return solution
    res = _Residual(pr, solution, lists)
    lists = res.lists
    x, z, y = res.l_units, res.l_waves, res.l_jobs  # kept up to date by `res.take`
    jobs_per_unit, waves = lists.jobs_per_unit, lists.waves
    wanted = None if targets is None else targets.tolist()
    unserved = left.tolist()
    groups = np.argsort(-pr.value, kind="stable") if order is None else order
    for g in groups.tolist():
        for p in range(lists.starts[g], lists.ends[g]):
            if unserved[g] <= 0:
                break
            jpu, w = jobs_per_unit[p], waves[p]
            lo, hi = 0, unserved[g] if wanted is None else min(unserved[g], wanted[p] - y[p])
            if hi > 0 and res.fits(p, *_growth(x[p], z[p], y[p], jpu, w, hi)):
                lo = hi  # the common case: everything asked for fits
            elif hi > 1 and not res.fits(p, *_growth(x[p], z[p], y[p], jpu, w, 1)):
                hi = 0  # not even one more job (a spent budget, a full quota): no search
            while lo < hi:  # the largest number of extra jobs that fits (fitting is monotone)
                mid = (lo + hi + 1) // 2
                if res.fits(p, *_growth(x[p], z[p], y[p], jpu, w, mid)):
                    lo = mid
                else:
                    hi = mid - 1
            while lo > 0 and not res.under_cap(p, *_growth(x[p], z[p], y[p], jpu, w, lo)):
                lo = (y[p] + lo - 1) // jpu * jpu - y[p]  # drop the partial (or last) wave
            if lo > 0:
                growth = _growth(x[p], z[p], y[p], jpu, w, lo)
                res.take(p, *growth)
                unserved[g] -= growth[2]
    return Solution(
        np.asarray(x, dtype=np.int64),
        np.asarray(z, dtype=np.int64),
        np.asarray(y, dtype=np.int64),
        solution.method,
    )


def _move_remainder(
    res: _Residual,
    pairs: range,
    p: int,
    jpu: list[int],
    waves: list[int],
    cost: Callable[[int, int, int, int], float],
) -> bool:
    """Move the jobs of a pair's part-filled last wave to the offering of the group that takes them cheapest."""
    x, z, y = res.l_units, res.l_waves, res.l_jobs
    jobs = y[p]
    rest = jobs % jpu[p]
    if rest == 0 or rest == jobs:
        return False
    keep_z = -(-(jobs - rest) // jpu[p])
    keep_x = -(-keep_z // waves[p])
    saving = cost(p, x[p], z[p], jobs) - cost(p, keep_x, keep_z, jobs - rest)
    dx_p, dz_p = keep_x - x[p], keep_z - z[p]
    res.take(p, dx_p, dz_p, -rest)
    best, best_delta, best_growth = -1, saving - 1e-9, (0, 0, 0)
    for q in pairs:
        if q == p:
            continue
        growth = _growth(x[q], z[q], y[q], jpu[q], waves[q], rest)
        dx, dz, dy = growth
        delta = res.p_obj_wave[q] * dz + res.p_obj_start[q] * dx + res.p_egress_usd[q] * dy
        if delta < best_delta and res.fits(q, dx, dz, dy) and res.under_cap(q, dx, dz, dy):
            best, best_delta, best_growth = q, delta, growth
    if best < 0:
        res.take(p, -dx_p, -dz_p, rest)
        return False
    res.take(best, *best_growth)
    return True


def improve(
    problem: Problem, solution: Solution, rounds: int = 2, lists: PairLists | None = None
) -> Solution:
    """Local search: move all of a pair's jobs to another offering of its group when that is cheaper,
    else the jobs of its part-filled last wave (a smaller unit often runs a remainder for less).

    Rounding leaves groups split over several offerings with part-empty waves, or on an offering
    the relaxation liked only fractionally; moving a pair's jobs whole removes most of that waste."""
    pr = problem
    res = _Residual(pr, solution, lists)
    x, z, y = res.l_units, res.l_waves, res.l_jobs  # kept up to date by `res.take`
    jpu, waves = res.lists.jobs_per_unit, res.lists.waves

    def cost(p: int, units: int, unit_waves: int, jobs: int) -> float:
        return res.p_obj_wave[p] * unit_waves + res.p_obj_start[p] * units + res.p_egress_usd[p] * jobs

    starts, ends = res.lists.starts, res.lists.ends
    for _ in range(rounds):
        changed = False
        for g in range(len(pr.demand)):
            pairs = range(starts[g], ends[g])
            used = [p for p in pairs if y[p] > 0]
            used.sort(key=lambda p: -cost(p, x[p], z[p], y[p]) / y[p])
            for p in used:
                units, unit_waves, jobs = x[p], z[p], y[p]
                current = cost(p, units, unit_waves, jobs)
                res.take(p, -units, -unit_waves, -jobs)
                best, best_delta, best_growth = -1, current - 1e-9, (0, 0, 0)
                obj_wave, obj_start, egress_usd = res.p_obj_wave, res.p_obj_start, res.p_egress_usd
                ceil = math.ceil
                for q in pairs:
                    if q == p:
                        continue
                    # `_growth` written out (the same arithmetic): this loop runs ~5×10^5 times at 5,000 groups
                    xq, zq = x[q], z[q]
                    dz = max(zq, ceil((y[q] + jobs) / jpu[q]))
                    dx = max(xq, ceil(dz / waves[q])) - xq
                    dz -= zq
                    delta = obj_wave[q] * dz + obj_start[q] * dx + egress_usd[q] * jobs
                    if delta < best_delta and res.fits(q, dx, dz, jobs) and res.under_cap(q, dx, dz, jobs):
                        best, best_delta, best_growth = q, delta, (dx, dz, jobs)
                if best >= 0:
                    res.take(best, *best_growth)
                    changed = True
                    continue
                res.take(p, units, unit_waves, jobs)  # nothing cheaper for all of them: put them back
                changed |= _move_remainder(res, pairs, p, jpu, waves, cost)
        if not changed:
            break
    return Solution(
        np.asarray(x, dtype=np.int64),
        np.asarray(z, dtype=np.int64),
        np.asarray(y, dtype=np.int64),
        solution.method,
    )

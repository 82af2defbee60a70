"""Column generation: price the whole compatible catalog against the duals of the jobs-only LP, so no shortlist can exclude the LP optimum.

The shortlists of `candidates.py` are a restricted master: a guess at which offerings matter. Here
the jobs-only relaxation of `problem.py` (`job_lp`) is solved over them with HiGHS, and every
compatible offering of every group is priced against its duals: a column (group g, offering o)
with cost c and limit coefficients a has reduced cost c − Σ_r dual_r · a_r (duals ≤ 0 on the ≤
rows of a minimisation). Columns with a negative reduced cost join the group's shortlist and the LP
is solved again, until none is left: the LP is then optimal over the full catalog. Both
lexicographic phases are priced: phase 1 (most value served: c = −value) then phase 2 (least cost
at that value: c = the jobs-only cost per job, with the value row's dual).

Pricing is exact but cheap where it can be:
* phase 1 prices only groups the LP leaves short (a fully served group's demand-row dual already
  pays its whole value, so no column of it can have a negative reduced cost);
* phase 2 prices, per group, only offerings whose full-packing cost per job (a lower bound on the
  LP's per-job cost, from the shared per-shape costs of `candidates.py`) is below the group's
  threshold −dual_demand + value × (−dual_value): limit rows only add to a column's reduced cost;
* both screen with the group's egress (its cost, and the egress cap's dual times its GB), which depends
  only on the offering's location, before any other coefficient is computed.
The rules that need the price (budget for a wave, pacing, caps) are checked on the SCREEN_K offerings the
screen picks; a group whose picks they all reject is screened again without them, four times as many
picked each time, so that rejected offerings cannot hide one that improves the LP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from provisioner.domain import PlanningConstraints
from provisioner.planner.candidates import BaseCosts, GroupCandidates, _merge
from provisioner.planner.columns import FloatArray, IntArray, OfferingColumns
from provisioner.planner.compatibility import CompatContext
from provisioner.planner.cost import GroupCosts, GroupEgress, PlanContext, group_costs, interruption_factor
from provisioner.planner.jobs_lp import SERVED_SLACK, JobsLp, LpResult
from provisioner.planner.limits import Limits
from provisioner.planner.numerics import smallest
from provisioner.planner.problem import UNIT_EPSILON, Problem, _per_job, build_problem, job_cost

MAX_ROUNDS = 12  # LP solves per phase; each round adds every group's best columns
PER_GROUP = 4  # columns a group may gain per round (most negative reduced cost first)
SCREEN_K = 16  # offerings per group per round priced exactly after the screen
# (group, offering) LP coefficients computed in one plan, at most (the screen's cost; re-screening
# cached ones is cheaper and not counted): every trace instance of benchmarks/planner_gap.py is
# priced to the end within it, while thousands of groups with limits binding everywhere stop there
# (`complete` is then False and the plan says so)
SCREEN_BUDGET = 4_000_000
TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class _Duals:
    """The LP's row duals spread over what the rows are keyed by (0 where there is no row)."""

    demand: FloatArray  # per group
    capacity: FloatArray  # per offering
    quota: FloatArray  # per family code
    facility: float
    spend: FloatArray  # per experiment
    budget: FloatArray
    egress: FloatArray
    gpus: FloatArray
    node_hours: FloatArray  # per offering
    value: float  # phase 2: the served-value row (−value·y ≤ −served)


def _spread(index: dict[str, tuple[IntArray, int]], duals: FloatArray, name: str, size: int) -> FloatArray:
    out = np.zeros(size)
    found = index.get(name)
    if found is not None:
        keys, base = found
        out[keys] = duals[base : base + len(keys)]
    return out


def _duals(problem: Problem, solved: LpResult, phase2: bool) -> _Duals:
    """The LP's row duals spread over what the rows are keyed by."""
    y, index, lim = solved.row_duals, solved.index, problem.limits
    n_exp = len(lim.experiments)
    facility = _spread(index, y, "facility", 1)
    return _Duals(
        demand=_spread(index, y, "demand", len(problem.demand)),
        capacity=_spread(index, y, "capacity", len(lim.capacity)),
        quota=_spread(index, y, "quota", len(lim.quota)),
        facility=float(facility[0]),
        spend=_spread(index, y, "spend", n_exp),
        budget=_spread(index, y, "budget", n_exp),
        egress=_spread(index, y, "egress", n_exp),
        gpus=_spread(index, y, "gpus", n_exp),
        node_hours=_spread(index, y, "node_hours", len(lim.node_hours)),
        value=float(y[-1]) if phase2 else 0.0,
    )


def reduced_costs(
    priced: Problem, groups: IntArray, value: FloatArray, duals: _Duals, phase2: bool
) -> FloatArray:
    """Reduced cost of every pair of `priced` (a problem over candidate columns) in the master's LP.

    `groups[k]` is the master's index of `priced`'s k-th group; `value` is the master's value per job."""
    per_wave, per_unit = _per_job(priced)
    g = groups[priced.pair_group]
    o = priced.pair_offering
    e = priced.group_exp[priced.pair_group]
    v = value[g]
    money = priced.money_wave * per_wave + priced.money_start * per_unit + priced.egress_budget_job
    hours = priced.node_hours_wave * per_wave + priced.node_hours_start * per_unit
    dual_sum = (
        duals.demand[g]
        + duals.capacity[o] * per_unit
        + duals.quota[priced.family] * priced.cores * per_unit
        + (duals.facility + duals.spend[e]) * priced.price * per_unit
        + duals.budget[e] * money
        + duals.egress[e] * priced.egress_gb_job
        + duals.gpus[e] * priced.gpus * per_unit
        + duals.node_hours[o] * hours
    )
    if phase2:
        return job_cost(priced) - dual_sum + duals.value * v
    return -v - dual_sum


class ColumnGenerator:
    """Grows the groups' shortlists until the jobs-only LP over them is optimal over the full catalog."""

    def __init__(
        self,
        cols: OfferingColumns,
        ctx: PlanContext,
        compat: CompatContext,
        constraints: PlanningConstraints,
        limits: Limits,
        *,
        screen_budget: float = SCREEN_BUDGET,
        max_rounds: int = MAX_ROUNDS,
        price_capped: bool = False,
        egress_cost: bool = True,
        bases: BaseCosts | None = None,
    ) -> None:
        """`bases`: the round's costs without egress, if costing kept them (else computed here as asked);
        `screen_budget`/`max_rounds`: where the planner stops pricing (a bound runs to the end);
        `price_capped`: price groups with a cost cap too (their caps are not rows of the jobs LP, so
        the LP is then a relaxation: right for a lower bound, not for the planner's shortlists);
        `egress_cost` False: egress costs only its floor in the objective, the lowest marginal rate of
        the source's tiers left this period (the surrogate, the average rate of the group's own
        volume, can exceed what shared tiers charge; no GB costs less than the floor, so a bound
        counts that; egress caps and budget rows still hold)."""
        self.cols, self.ctx, self.compat = cols, ctx, compat
        self.constraints, self.limits = constraints, limits
        self.screen_budget, self.max_rounds, self.price_capped = screen_budget, max_rounds, price_capped
        self.egress_cost = egress_cost
        self.served = 0.0  # the value phase 1 reached (the most any plan over the priced columns serves)
        self.last: FloatArray | None = None  # the last phase-2 LP's jobs per pair, on the returned problem
        self.bases = bases if bases is not None else BaseCosts(cols, ctx)
        self.added = 0
        self.rounds = 0
        self.screened = 0
        self.complete = True  # False when the screen budget or the rounds stopped the pricing
        self._everything: dict[int, _Coefficients] = {}  # phase 1: every compatible offering of a short group
        self._egress: dict[int, GroupEgress] = {}  # per group
        # per group: offerings the rules that need the price reject (they depend on the group and the round only)
        self._rejected: dict[int, IntArray] = {}
        # the lexicographic jobs LP of the returned problem, when the last solves were of that problem
        # (phase 2 added no column): the solver reuses it instead of solving the same LP again
        self.lp: FloatArray | None = None
        self._lp: JobsLp | None = None  # the HiGHS model of the problem solved last

    def run(
        self, candidates: Sequence[GroupCandidates], served_at_most: float | None = None
    ) -> tuple[list[GroupCandidates], Problem]:
        """Grow the shortlists; the returned problem's LP is optimal over the catalog when `complete`.
        `served_at_most`: phase 2 asks for at most this value (default: the most phase 1 served)."""
        cands = list(candidates)
        cap = float("inf") if served_at_most is None else served_at_most
        problem = self._problem(cands)
        served: float | None = None
        for phase2 in (False, True):
            for round_no in range(self.max_rounds):
                solved = self._solve(problem, served if phase2 else None)
                self.rounds += 1
                if solved is None:
                    return cands, problem
                x, duals = solved.x, _duals(problem, solved, phase2)
                grown = self._price(problem, cands, duals, phase2)
                if not grown:
                    if not phase2:
                        self.served = float(problem.value[problem.pair_group] @ x)
                        served = min(self.served, cap) * (1 - SERVED_SLACK)
                    else:
                        self.last = x
                        if round_no == 0:  # phase 1 and 2 solved this very problem: its lexicographic LP
                            self.lp = x
                    break
                problem = self._problem(cands)
            else:
                self.complete = False  # out of rounds: columns with a negative reduced cost may be left
                if not phase2:  # out of rounds: phase 2 at what the last LP served
                    solved = self._solve(problem, None)
                    if solved is None:
                        return cands, problem
                    self.served = float(problem.value[problem.pair_group] @ solved.x)
                    served = min(self.served, cap) * (1 - SERVED_SLACK)
        return cands, problem

    def _solve(self, problem: Problem, served: float | None) -> LpResult | None:
        """Phase 1 (served is None: the most value) or phase 2 (least cost serving ≥ served) of the jobs LP;
        phase 2 of the problem phase 1 last solved starts from its basis."""
        if problem.pairs == 0:  # no group has a usable offering: none can be priced in either
            return None
        if self._lp is None or self._lp.problem is not problem:
            self._lp = JobsLp(problem)
        return self._lp.solve(served)

    def _group_egress(self, cand: GroupCandidates, g: int) -> GroupEgress:
        """The group's egress per location (its demand does not change while pricing: kept per group)."""
        found = self._egress.get(g)
        if found is None:
            found = self._egress[g] = GroupEgress(cand.group, cand.demand, self.cols, self.ctx)
        return found

    def _egress_cost(self, egress: GroupEgress) -> FloatArray:
        """Egress USD per job per location, as the master's objective counts it."""
        return egress.usd if self.egress_cost else egress.floor_usd

    def _problem(self, cands: Sequence[GroupCandidates]) -> Problem:
        problem = build_problem(cands, self.cols, self.ctx, self.constraints, self.limits)
        if not self.egress_cost and problem.pairs:
            by_group = np.stack(
                [GroupEgress(c.group, c.demand, self.cols, self.ctx).floor_usd for c in cands]
            )
            floor = by_group[problem.pair_group, self.cols.location[problem.pair_offering]]
            problem = replace(problem, egress_usd_job=floor)
        return problem

    def _price(self, problem: Problem, cands: list[GroupCandidates], duals: _Duals, phase2: bool) -> bool:
        """Add every group's most negative reduced-cost columns; False when there are none."""
        work: list[tuple[int, GroupCosts]] = []
        for g, cand in enumerate(cands):
            if cand.group.max_cost_per_hs23_hour is not None and not self.price_capped:
                continue  # cost caps are per-pair rows of the MILP, not in the jobs LP: keep the shortlist
            jpu, _ = self.compat.static_reasons(cand.group)
            egress = self._group_egress(cand, g)
            # the rules that need the price come after the screen: offerings they reject are left out of
            # the group's next screens, and the group screened again, until one passes or none is left (a
            # screen full of rejected offerings once hid one that improved the LP)
            take = SCREEN_K
            while (
                idx := self._to_price(cand, float(problem.value[g]), duals, g, phase2, take)
            ) is not None and len(idx):
                costs = group_costs(cand.group, idx, jpu, egress, self.cols, self.ctx)
                ok = (self.compat.priced_reasons(cand.group, costs) == 0) & np.isfinite(costs.total)
                if not ok.all():
                    self._rejected[g] = np.union1d(self._rejected.get(g, idx[:0]), idx[~ok])
                if ok.any():
                    work.append((g, costs.take(ok)))
                    break
                take *= 4  # all rejected: a few rounds reach every offering the screen passes
        if not work:
            return False
        # through `_problem`, so the candidates are priced with the master's own costs (a bound's
        # pricing once counted the egress its master leaves out, and could miss columns)
        priced = self._problem(
            [
                GroupCandidates(
                    cands[g].group,
                    cands[g].demand,
                    c,
                    c.take(np.zeros(0, dtype=np.int64)),
                    np.zeros(0, dtype=np.int64),
                    0,
                )
                for g, c in work
            ]
        )
        groups = np.array([g for g, _ in work], dtype=np.int64)
        rc = reduced_costs(priced, groups, problem.value, duals, phase2)
        scale = np.maximum(1.0, np.abs(job_cost(priced))) if phase2 else np.ones(len(rc))
        grew = False
        starts = np.searchsorted(priced.pair_group, np.arange(len(work)))
        ends = np.searchsorted(priced.pair_group, np.arange(len(work)), side="right")
        for k, (g, costs) in enumerate(work):
            part = rc[starts[k] : ends[k]]
            good = np.flatnonzero(part < -TOLERANCE * scale[starts[k] : ends[k]])
            if len(good) == 0:
                continue
            best = good[np.argsort(part[good], kind="stable")[:PER_GROUP]]
            cand = cands[g]
            cands[g] = GroupCandidates(
                cand.group,
                cand.demand,
                _merge(cand.solver, costs.take(best), cand.demand),
                cand.rejected,
                cand.rejected_reason,
                cand.compatible_count,
            )
            self.added += len(best)
            grew = True
        return grew

    def _to_price(
        self, cand: GroupCandidates, value: float, duals: _Duals, g: int, phase2: bool, take: int = SCREEN_K
    ) -> IntArray | None:
        """The group's `take` compatible offerings outside its shortlist with the most negative reduced cost,
        screened over the catalog with the LP's own coefficients (compatibility rules that need the price come
        after)."""
        group = cand.group
        if self.screened >= self.screen_budget:
            self.complete = False
            return None
        jpu, static = self.compat.static_reasons(group)
        work = group.hs23_hours_per_job
        egress = self._group_egress(cand, g)
        # limit rows only add to a column's reduced cost (duals ≤ 0, coefficients ≥ 0); the egress cap's
        # term depends only on the offering's location, so it screens before any coefficient is computed
        egress_term = -duals.egress[self.limits.exp_index[group.experiment]] * egress.gb
        if not phase2:
            if -value - duals.demand[g] >= -TOLERANCE:
                return None  # its demand row's dual pays its whole value: nothing can improve it
            if np.any(egress_term > 0):  # only the offerings the egress cap's dual leaves room for
                ok = np.flatnonzero(static == 0)
                ok = ok[-value - duals.demand[g] + egress_term[self.cols.location[ok]] < -TOLERANCE]
                if len(ok) == 0:
                    return None
                coef = _Coefficients.of(cand, ok, jpu, self, egress)
                self.screened += len(ok)
            # a short group is priced again every round: its coefficients are kept
            elif g in self._everything:
                coef = self._everything[g]
            else:
                coef = self._everything[g] = _Coefficients.of(
                    cand, np.flatnonzero(static == 0), jpu, self, egress
                )
                self.screened += len(coef.idx)
        else:
            # a column's LP cost per job is at least its full-packing cost plus its egress, and the egress
            # cap's term only adds to its reduced cost: only offerings under the threshold can enter
            threshold = (duals.demand[g] - duals.value * value) / max(work, 1e-300)
            base = self.bases.get(group, jpu)
            sorted_total = base.prefix_total
            if len(sorted_total) == 0 or sorted_total[0] >= threshold:
                return None
            count = int(np.searchsorted(sorted_total, threshold))
            if count < len(sorted_total) or base.bound >= threshold:
                idx = base.prefix[:count]
            else:
                idx = np.flatnonzero(base.total < threshold)
            idx = idx[static[idx] == 0]
            if not egress.none:
                extra = (self._egress_cost(egress) + egress_term) / max(work, 1e-300)
                idx = idx[base.total[idx] + extra[self.cols.location[idx]] < threshold]
            if len(idx) == 0:
                return None
            coef = _Coefficients.of(cand, idx, jpu, self, egress)
            self.screened += len(idx)
        rc = coef.reduced_costs(duals, g, value, self.limits.exp_index[group.experiment], phase2)
        # already on the shortlist (a dozen offerings: one comparison matrix is cheaper than np.isin's sort)
        shortlist = cand.solver.offering
        if len(coef.idx) * len(shortlist) <= 1 << 16:
            rc[(coef.idx[:, None] == shortlist[None, :]).any(axis=1)] = np.inf
        else:
            rc[np.isin(coef.idx, shortlist)] = np.inf
        rejected = self._rejected.get(g)
        if rejected is not None:
            rc[np.isin(coef.idx, rejected)] = np.inf
        good = np.flatnonzero(rc < -TOLERANCE)
        if len(good) > take:
            good = good[smallest(rc[good], take)]
        return coef.idx[good]


@dataclass(frozen=True, slots=True)
class _Coefficients:
    """A group's jobs-LP column on offerings `idx`, from the catalog columns: the formulas of
    `cost.group_costs` and `problem.build_problem`/`job_lp`, vectorised without building a problem."""

    idx: IntArray
    per_unit: FloatArray
    money: FloatArray
    hours: FloatArray
    cost: FloatArray
    price: FloatArray
    cores: FloatArray
    gpus: FloatArray
    family: IntArray
    gb: FloatArray

    @classmethod
    def of(
        cls,
        cand: GroupCandidates,
        idx: IntArray,
        jpu_all: IntArray,
        gen: ColumnGenerator,
        egress: GroupEgress,
    ) -> _Coefficients:
        """`egress`: the group's (`GroupEgress` of its group and demand)."""
        group, cols, ctx = cand.group, gen.cols, gen.ctx
        d = float(max(cand.demand, 1))
        jpu = np.maximum(jpu_all[idx], 1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            run = group.walltime_hours * group.reference_hs23_per_core / cols.hs23_per_core[idx]
            wave_hours = run * interruption_factor(cols.interruption[idx], run)
            waves = np.maximum(1.0, np.floor(ctx.window_hours(group) / wave_hours))
        per_wave = 1.0 / np.minimum(jpu, d)
        per_unit = 1.0 / np.minimum(jpu * waves, d)
        price, startup, paid = cols.price[idx], cols.startup_hours[idx], ctx.paid[idx]
        loc = cols.location[idx]
        per_job_hours = wave_hours * per_wave + startup * per_unit
        cost = paid * per_job_hours + UNIT_EPSILON * per_unit + gen._egress_cost(egress)[loc]
        return cls(
            idx=idx,
            per_unit=per_unit,
            money=price * per_job_hours + egress.budget_usd[loc],
            hours=np.where(ctx.is_allocation[idx], per_job_hours, 0.0),
            cost=np.where(np.isfinite(cost), cost, np.inf),
            price=price,
            cores=cols.cores[idx].astype(np.float64),
            gpus=cols.gpu_count[idx].astype(np.float64),
            family=cols.family[idx],
            gb=egress.gb[loc],
        )

    def reduced_costs(self, duals: _Duals, g: int, value: float, e: int, phase2: bool) -> FloatArray:
        idx = self.idx
        dual_sum = (
            duals.demand[g]
            + (
                duals.capacity[idx]
                + duals.quota[self.family] * self.cores
                + (duals.facility + duals.spend[e]) * self.price
                + duals.gpus[e] * self.gpus
            )
            * self.per_unit
            + duals.budget[e] * self.money
            + duals.egress[e] * self.gb
            + duals.node_hours[idx] * self.hours
        )
        if phase2:
            return self.cost - dual_sum + duals.value * value
        return np.where(np.isfinite(self.cost), -value - dual_sum, np.inf)

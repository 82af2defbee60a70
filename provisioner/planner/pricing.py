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
* a lower bound on each column's reduced cost screens the catalog before any coefficient is computed:
  its cost per job (phase 2) is at least its full-packing cost (`total` × work, from the per-shape costs
  of `candidates.py`) plus egress, the money the budget's dual weighs at least `total` × work × price /
  paid plus the egress the budget counts, the egress cap's term its dual × the GB, all ≤ 0 duals against
  ≥ 0 coefficients; where the phase's cost or a budget's dual counts, only a prefix of the shape's
  offerings by `total` can pass, so only that is read;
* the coefficients of what passes are computed for all groups' pairs at once (numpy over the pairs,
  not a loop over thousands of groups), and so are the costs and price rules of what the screen picks
  (`candidates.price_together`: the numbers `group_costs` gives group by group).
The rules that need the price (budget for a wave, pacing, caps) are checked on the SCREEN_K offerings the
screen picks; a group whose picks they all reject is screened again without them, four times as many
picked each time, so that rejected offerings cannot hide one that improves the LP. Each round's LP is the
last round's model grown by the new columns, warm from its basis (`JobsLp.grow`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from provisioner.domain import PlanningConstraints
from provisioner.planner.candidates import (
    BaseCosts,
    GroupCandidates,
    PriceAsk,
    _Base,
    _merge_packed,
    packed_total,
    price_together,
)
from provisioner.planner.columns import FloatArray, IntArray, OfferingColumns
from provisioner.planner.compatibility import CompatContext, ReasonArray
from provisioner.planner.cost import GroupCosts, GroupEgress, PlanContext, group_costs
from provisioner.planner.jobs_lp import SERVED_SLACK, JobsLp, LpResult
from provisioner.planner.limits import Limits
from provisioner.planner.problem import UNIT_EPSILON, Problem, _per_job, build_problem, job_cost

MAX_ROUNDS = 12  # LP solves per phase; each round adds every group's best columns
# columns a group may gain per round (most negative reduced cost first): every one the screen's SCREEN_K
# picks that prices in. Fewer rounds of the LP: `python -m benchmarks.planner_ab` planned the 5,000 groups
# of benchmarks/planner_scale.py in 0.88x the time with 8 than with 4 (pricing 2.22 -> 1.67 s), and with
# 16 in 0.96x the time with 8 (pricing 1.64 -> 1.46 s, the same plan); 720 groups: the same plan each time
PER_GROUP = 16
SCREEN_K = 16  # offerings per group per round priced exactly after the screen
# (group, offering) pairs past the screen's lower bound in one plan, at most (a short group priced whole
# counts once): every trace instance of benchmarks/planner_gap.py and both instances of
# benchmarks/planner_scale.py are priced to the end within it (5,000 groups: 112 thousand pairs); where it
# runs out, `complete` is False and the plan says so
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


def _spread(duals: dict[str, tuple[IntArray, FloatArray]], name: str, size: int) -> FloatArray:
    out = np.zeros(size)
    found = duals.get(name)
    if found is not None:
        keys, values = found
        out[keys] = values
    return out


def _duals(problem: Problem, solved: LpResult) -> _Duals:
    """The LP's row duals spread over what the rows are keyed by."""
    y, lim = solved.duals, problem.limits
    n_exp = len(lim.experiments)
    facility = _spread(y, "facility", 1)
    return _Duals(
        demand=_spread(y, "demand", len(problem.demand)),
        capacity=_spread(y, "capacity", len(lim.capacity)),
        quota=_spread(y, "quota", len(lim.quota)),
        facility=float(facility[0]),
        spend=_spread(y, "spend", n_exp),
        budget=_spread(y, "budget", n_exp),
        egress=_spread(y, "egress", n_exp),
        gpus=_spread(y, "gpus", n_exp),
        node_hours=_spread(y, "node_hours", len(lim.node_hours)),
        value=solved.value_dual,
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
        self._whole: set[int] = set()  # groups whose every compatible offering was priced (and counted) once
        self._rows: dict[int, _ScreenRows] = {}  # per group: its job shape's costs and what the screen reads
        # per (rule set, job shape) by identity (the group's `_ScreenRows` keep both alive)
        self._prefix_reasons: dict[tuple[int, int], ReasonArray] = {}
        self._groups: _GroupTable | None = None  # built for the candidates `run` is given
        # (group × offerings + offering, sorted) offerings the rules that need the price reject for a group
        # (they depend on the group and the round only)
        self._rejected_keys: IntArray = np.zeros(0, dtype=np.int64)
        self._egress: dict[int, GroupEgress] = {}  # per group
        self._packed: dict[int, FloatArray] = {}  # per group, its shortlist's packed costs (`_packed_of`)
        # offerings paying an allocation's value on top of their price, and the share of paid that is money
        self._valued = ctx.valued
        self._money_share = np.ones(len(cols))  # money's share of what an offering is paid: price / paid
        self._money_share[self._valued] = cols.price[self._valued] / ctx.paid[self._valued]
        # the lexicographic jobs LP of the returned problem, when the last solves were of that problem or
        # phase 1 was priced to the end: the solver reuses it instead of solving the same LP again
        self.lp: FloatArray | None = None
        self._lp: JobsLp | None = None  # the HiGHS model of the problem solved last

    def run(
        self, candidates: Sequence[GroupCandidates], served_at_most: float | None = None
    ) -> tuple[list[GroupCandidates], Problem]:
        """Grow the shortlists; the returned problem's LP is optimal over the catalog when `complete`.
        `served_at_most`: phase 2 asks for at most this value (default: the most phase 1 served)."""
        cands = list(candidates)
        # what is kept per group is keyed by its position in `cands`: a run starts afresh
        self._groups = _GroupTable(cands, self)
        self._rows, self._egress, self._whole, self._packed = {}, {}, set(), {}
        self._prefix_reasons = {}
        self._rejected_keys = np.zeros(0, dtype=np.int64)
        self._lp = None
        cap = float("inf") if served_at_most is None else served_at_most
        problem = self._problem(cands)
        # what the screens read of every group, read beside the first LP solve: HiGHS lets go of the GIL
        # while it solves (on the 5,000-group instance of benchmarks/planner_scale.py, about 0.15 s of reading
        # beside a 1.1 s solve, on the core the costing's worker leaves idle)
        ahead = threading.Thread(target=self._read_groups, args=(cands,), name="pricing-read-ahead")
        ahead.start()
        try:
            return self._rounds(cands, problem, cap, ahead)
        finally:
            ahead.join()

    def _rounds(
        self, cands: list[GroupCandidates], problem: Problem, cap: float, ahead: threading.Thread
    ) -> tuple[list[GroupCandidates], Problem]:
        """`run`'s rounds of both phases, once `ahead` has read the groups (it runs beside the first solve)."""
        served: float | None = None
        proven = False
        for phase2 in (False, True):
            for round_no in range(self.max_rounds):
                solved = self._solve(problem, served if phase2 else None)
                ahead.join()
                self.rounds += 1
                if solved is None:
                    return cands, problem
                x, duals = solved.x, _duals(problem, solved)
                grown = self._price(problem, cands, duals, phase2)
                if not grown:
                    if not phase2:
                        self.served = float(problem.value[problem.pair_group] @ x)
                        served = min(self.served, cap) * (1 - SERVED_SLACK)
                        # priced to the end: no column phase 2 adds lets any problem serve more
                        proven = self.complete and cap >= self.served
                    else:
                        self.last = x
                        # the lexicographic LP of this problem when phase 1 solved it too or no column
                        # could raise its phase 1 (the solver then need not solve it again: 1.5 s on the
                        # 5,000-group instance of benchmarks/planner_scale.py)
                        if round_no == 0 or proven:
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

    def _read_groups(self, cands: Sequence[GroupCandidates]) -> None:
        """What the screens read of every group they may screen (`_rows_of`, the egress rows): the same as
        reading it when first asked. What fails here is left to be read then, where the error is raised."""
        table = self._groups
        assert table is not None
        at = np.flatnonzero(table.priced)
        try:
            for g in at.tolist():
                self._rows_of(g, cands[g])
            self._egress_rows(at, cands)
        except Exception:  # read again when asked, which raises it in the planner's thread
            pass

    def _solve(self, problem: Problem, served: float | None) -> LpResult | None:
        """Phase 1 (served is None: the most value) or phase 2 (least cost serving ≥ served) of the jobs LP,
        in one model over the rounds, warm from the last solve's basis."""
        if problem.pairs == 0:  # no group has a usable offering: none can be priced in either
            return None
        if self._lp is None:
            self._lp = JobsLp(problem)
        elif self._lp.problem is not problem:
            self._lp.grow(problem)  # the last model's pairs are all in this one (pricing only adds)
        return self._lp.solve(served)

    def _group_egress(self, cand: GroupCandidates, g: int) -> GroupEgress:
        """The group's egress per location (its demand does not change while pricing: kept per group)."""
        found = self._egress.get(g)
        if found is None:
            # costing's (the same group and demand) where it kept one: 0.3 s of pricing at 5,000 groups
            found = cand.egress or GroupEgress(cand.group, cand.demand, self.cols, self.ctx)
            self._egress[g] = found
        return found

    def _egress_cost(self, egress: GroupEgress) -> FloatArray:
        """Egress USD per job per location, as the master's objective counts it."""
        return egress.usd if self.egress_cost else egress.floor_usd

    def _problem(self, cands: Sequence[GroupCandidates]) -> Problem:
        problem = build_problem(cands, self.cols, self.ctx, self.constraints, self.limits)
        if not self.egress_cost and problem.pairs:
            by_group = np.stack(
                [(c.egress or GroupEgress(c.group, c.demand, self.cols, self.ctx)).floor_usd for c in cands]
            )
            floor = by_group[problem.pair_group, self.cols.location[problem.pair_offering]]
            problem = replace(problem, egress_usd_job=floor)
        return problem

    def _price(self, problem: Problem, cands: list[GroupCandidates], duals: _Duals, phase2: bool) -> bool:
        """Add every group's most negative reduced-cost columns; False when there are none."""
        picks = self._screen(self._may_improve(problem, cands, duals, phase2), problem, cands, duals, phase2)
        work = self._priced_picks(picks, cands)
        for g in sorted(set(picks) - {g for g, _, _ in work}):
            # the rules that need the price come after the screen: offerings they reject are left out of
            # the group's next screens, and the group screened again, until one passes or none is left (a
            # screen full of rejected offerings once hid one that improved the LP)
            cand = cands[g]
            jpu, _ = self.compat.static_reasons(cand.group)
            egress = self._group_egress(cand, g)
            take = SCREEN_K * 4
            idx = self._screen([g], problem, cands, duals, phase2, take).get(g)
            while idx is not None and len(idx):
                costs = group_costs(
                    cand.group, idx, jpu, egress, self.cols, self.ctx, self._rows_of(g, cand).base.risk_factor
                )
                ok = (self.compat.priced_reasons(cand.group, costs) == 0) & np.isfinite(costs.total)
                if not ok.all():
                    self._reject(g, idx[~ok])
                if ok.any():
                    kept = costs.take(ok)
                    work.append((g, kept, packed_total(kept, cand.demand)))
                    break
                take *= 4  # all rejected: a few rounds reach every offering the screen passes
                idx = self._screen([g], problem, cands, duals, phase2, take).get(g)
        work.sort(key=lambda found: found[0])
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
                    cands[g].egress,
                )
                for g, c, _ in work
            ]
        )
        groups = np.array([g for g, _, _ in work], dtype=np.int64)
        rc = reduced_costs(priced, groups, problem.value, duals, phase2)
        scale = np.maximum(1.0, np.abs(job_cost(priced))) if phase2 else np.ones(len(rc))
        grew = False
        starts = np.searchsorted(priced.pair_group, np.arange(len(work)))
        ends = np.searchsorted(priced.pair_group, np.arange(len(work)), side="right")
        for k, (g, costs, packed) in enumerate(work):
            part = rc[starts[k] : ends[k]]
            good = np.flatnonzero(part < -TOLERANCE * scale[starts[k] : ends[k]])
            if len(good) == 0:
                continue
            best = good[np.argsort(part[good], kind="stable")[:PER_GROUP]]
            cand = cands[g]
            solver, self._packed[g] = _merge_packed(
                (cand.solver, self._packed_of(g, cand)), (costs.take(best), packed[best])
            )
            cands[g] = GroupCandidates(
                cand.group,
                cand.demand,
                solver,
                cand.rejected,
                cand.rejected_reason,
                cand.compatible_count,
                cand.egress,
                self._packed[g],
            )
            self.added += len(best)
            grew = True
        return grew

    def _priced_picks(
        self, picks: dict[int, IntArray], cands: Sequence[GroupCandidates]
    ) -> list[tuple[int, GroupCosts, FloatArray]]:
        """Every group's picks priced at once (`candidates.price_together`, the numbers `group_costs` gives
        per group), with their packed costs: per group with any that its price rules allow, those (the
        offerings they reject are left out of its next screens); a group whose picks they all reject is
        left out."""
        table = self._groups
        assert table is not None
        if not picks:
            return []
        order = list(picks)
        asks = []
        for g in order:
            rows = self._rows_of(g, cands[g])
            asks.append(
                PriceAsk(
                    cands[g].group, rows.jpu, self._group_egress(cands[g], g), rows.base.risk_factor, picks[g]
                )
            )
        priced = price_together(asks, self.cols, self.ctx, self.compat)
        costs, ends = priced.costs, priced.ends
        ok = (priced.reasons == 0) & np.isfinite(costs.total)
        packed = packed_total(
            costs, table.demand[np.repeat(np.array(order, dtype=np.int64), np.diff([0, *ends]))]
        )
        idx = costs.offering
        work: list[tuple[int, GroupCosts, FloatArray]] = []
        for g, a, b in zip(order, [0, *ends[:-1]], ends, strict=True):
            good = ok[a:b]
            if not good.all():
                self._reject(g, idx[a:b][~good])
            if good.any():
                keep = a + np.flatnonzero(good)
                work.append((g, costs.take(keep), packed[keep]))
        return work

    def _packed_of(self, g: int, cand: GroupCandidates) -> FloatArray:
        """The group's shortlist's packed costs (`packed_total`, per offering): costing's, then kept per group
        as columns are added, rather than computed again for the whole shortlist at each merge."""
        found = self._packed.get(g)
        if found is None:
            found = cand.packed if cand.packed is not None else packed_total(cand.solver, cand.demand)
            self._packed[g] = found
        return found

    def _reject(self, g: int, offerings: IntArray) -> None:
        keys = g * len(self.cols) + offerings
        self._rejected_keys = np.union1d(self._rejected_keys, keys)

    def _may_improve(
        self, problem: Problem, cands: Sequence[GroupCandidates], duals: _Duals, phase2: bool
    ) -> list[int]:
        """The groups that may have a column with a negative reduced cost: in phase 1 those the LP leaves short
        (a fully served group's demand-row dual pays its whole value), in phase 2 all; not those with a
        cost cap unless `price_capped`."""
        table = self._groups
        assert table is not None
        may = table.priced & (problem.value + duals.demand > TOLERANCE) if not phase2 else table.priced
        return np.flatnonzero(may).tolist()

    def _rows_of(self, g: int, cand: GroupCandidates) -> _ScreenRows:
        """What pricing reads of the group that does not change between rounds, kept per group."""
        found = self._rows.get(g)
        if found is not None:
            return found
        jpu, static = self.compat.static_reasons(cand.group)
        base = self.bases.get(cand.group, jpu)
        key = (id(static), id(base))
        prefix_reasons = self._prefix_reasons.get(key)
        if prefix_reasons is None:  # the same for the groups of a rule set and job shape
            prefix_reasons = self._prefix_reasons[key] = static[base.prefix]
        valued = self._valued
        found = self._rows[g] = _ScreenRows(
            jpu,
            static,
            base,
            prefix_reasons,
            base.valued_total,
            np.maximum(jpu[valued], 1).astype(np.float64),
            static[valued],
        )
        return found

    def _full(self, g: int, cand: GroupCandidates) -> _Base:
        """The group's shape costs with every offering's `total` (a worker sends them back without it)."""
        rows = self._rows_of(g, cand)
        if rows.base.thin:
            rows = self._rows[g] = replace(rows, base=self.bases.full(cand.group, rows.jpu))
        return rows.base

    def _screen(
        self,
        groups: Sequence[int],
        problem: Problem,
        cands: Sequence[GroupCandidates],
        duals: _Duals,
        phase2: bool,
        take: int = SCREEN_K,
    ) -> dict[int, IntArray]:
        """Per group of `groups` that has any, its `take` compatible offerings outside its shortlist with the
        most negative reduced cost (in catalog order), from the LP's own coefficients computed for all
        groups' candidate pairs at once (the rules that need the price come after).

        A column's reduced cost is its cost less what the demand and value rows' duals pay (`room`) plus
        limit terms that are each ≥ 0 (duals ≤ 0, coefficients ≥ 0). Its cost per job is at least `total`
        × work (full packing, `base_total`) and its money per job, which the budget's dual weighs, at least
        `total` × work × price / paid (paid = price but where an allocation's value is added). So where
        the phase's cost (phase 2) or a budget's dual counts, only offerings whose `total` is below
        room / ((1 + budget dual) × work) can enter, a prefix of the shape's offerings by `total`, plus
        those with an allocation's value: on the 5,000 groups of benchmarks/planner_scale.py, whose budget
        rows bind in both phases, phase 1 otherwise priced every compatible offering of 1,890 short
        groups until the screen budget ran out, none entering. Phase 1 without a budget's dual prices
        every compatible offering within the room the egress cap's dual leaves."""
        if self.screened >= self.screen_budget:
            self.complete = False
            return {}
        table = self._groups
        assert table is not None
        n, loc = len(self.cols), self.cols.location
        at = np.array(groups, dtype=np.int64)
        if len(at) == 0:
            return {}
        self._egress_rows(at, cands)
        own = 1.0 if phase2 else 0.0  # phase 1's cost is −value, already in the room
        budget = -duals.budget[table.exp]  # per group, its experiment's budget dual (≥ 0)
        # what the demand and value rows' duals pay per job of each group
        room = duals.demand - duals.value * problem.value if phase2 else problem.value + duals.demand
        with np.errstate(divide="ignore", invalid="ignore"):
            limits = (room / ((own + budget) * table.work) * (1 + 1e-6))[at].tolist()
        # per group of `groups` and location, what egress adds to a column's reduced cost at least: its cost
        # (phase 2), the budget's dual times the egress money the budget counts, the egress cap's dual × GB
        row = np.full(len(table.work), -1, dtype=np.int64)
        row[at] = np.arange(len(at))
        terms = (
            own * table.usd[at]
            + budget[at, None] * table.budget_usd[at]
            - duals.egress[table.exp[at], None] * table.gb[at]
        )
        # per group, the least of those terms and the next higher: offerings at the locations of the least
        # (where the data is) are read up to `limits`, the others only up to the limit less the next
        # higher term (`far`), the egress they add at least (on the 5,000 groups of
        # benchmarks/planner_scale.py, 1.6 of the 1.9 million pairs the prefixes held paid egress)
        least = terms.min(axis=1) if terms.shape[1] else np.zeros(len(at))
        above = np.where(terms > least[:, None], terms, np.inf).min(axis=1, initial=np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            far_all = (room[at] - above) / ((own + budget[at]) * table.work[at]) * (1 + 1e-6)
        far = np.where(np.isfinite(above), far_all, np.inf).tolist()
        g_of: list[int] = []
        offerings: list[IntArray] = []
        totals: list[FloatArray] = []
        fits: list[FloatArray] = []
        reasons: list[ReasonArray] = []
        charged: list[bool] = []  # counted against the screen budget (not a group priced whole before)
        for g, limit, far_limit in zip(groups, limits, far, strict=True):
            rows = self._rows_of(g, cands[g])
            jpu, static, base = rows.jpu, rows.static, rows.base
            extra: IntArray
            whole = False
            if own + budget[g] > 0:
                count = int(np.searchsorted(base.prefix_total, limit))
                if count < len(base.prefix_total) or base.bound >= limit:
                    cut = min(count, int(np.searchsorted(base.prefix_total, far_limit)))
                    if cut == count:
                        pos: slice | IntArray = slice(0, count)
                    else:  # beyond `cut`, only the offerings at the locations of the least egress term
                        k = row[g]
                        near = terms[k][base.prefix_location[cut:count]] < above[k]
                        pos = np.concatenate((np.arange(cut), cut + np.flatnonzero(near)))
                    g_of += (g, g)
                    offerings += (base.prefix[pos], self._valued)
                    totals += (base.prefix_total[pos], rows.valued_total)
                    fits += (base.prefix_jpu[pos], rows.valued_fit)
                    reasons += (rows.prefix_reasons[pos], rows.valued_reasons)
                    charged += (True, True)
                    continue
                # beyond the prefix: the limit per location, less what egress adds there at least
                base = self._full(g, cands[g])
                by_place = limit - terms[row[g]] / ((own + budget[g]) * table.work[g])
                # (compatible ones alone: most of the catalog is below a limit this high)
                beyond = np.flatnonzero((base.total < by_place[loc]) & (static == 0))
                extra = np.concatenate((beyond, self._valued))  # each pair is kept once below
            else:  # every compatible offering (the egress cap's dual screens below)
                base = self._full(g, cands[g])
                extra = np.flatnonzero(static == 0)
                whole = not np.any(duals.egress[table.exp[g]] * table.gb[g] < 0)
            if len(extra):
                g_of.append(g)
                offerings.append(extra)
                totals.append(base.total[extra])
                fits.append(np.maximum(jpu[extra], 1).astype(np.float64))
                reasons.append(static[extra])
                # a short group is priced whole again each round, at the cost of the arithmetic alone
                charged.append(not whole or g not in self._whole)
                if whole:
                    self._whole.add(g)
        if not offerings:
            return {}
        sizes = [len(o) for o in offerings]
        group = np.repeat(np.array(g_of, dtype=np.int64), sizes)
        offering = np.concatenate(offerings)
        place = loc[offering]
        # a lower bound on each pair's reduced cost: cost per job at least `total` × work plus egress,
        # money per job at least `total` × work × price / paid plus the egress the budget counts (the
        # bound is computed in another order than the coefficients: 1 − 1e-9 keeps it below them)
        weight = own + budget[group] * self._money_share[offering]
        if own > 0:  # phase 2: every pair pays its cost
            bound = np.concatenate(totals) * table.work[group] * weight * (1 - 1e-9)
        else:
            bound = np.zeros(len(group))
            # (a group priced whole weighs nothing: its `total`s may be inf)
            paying = np.flatnonzero(weight > 0)
            bound[paying] = (
                np.concatenate(totals)[paying] * table.work[group[paying]] * weight[paying] * (1 - 1e-9)
            )
        bound += terms[row[group], place]
        keep = np.flatnonzero((np.concatenate(reasons) == 0) & (bound - room[group] < -TOLERANCE))
        # each pair once (an allocation can be in the prefix too), not on the shortlist nor rejected by
        # the group's price rules
        keys, first = np.unique(group[keep] * n + offering[keep], return_index=True)
        known = np.concatenate((problem.pair_group * n + problem.pair_offering, self._rejected_keys))
        keep = keep[first[~np.isin(keys, known)]]
        self.screened += int(np.repeat(np.array(charged), sizes)[keep].sum())
        if len(keep) == 0:
            return {}
        group, offering = group[keep], offering[keep]
        # the hours a wave takes, re-runs included: the shapes' interruption factors gathered per pair
        factors = np.ones(len(keep))
        risk = self.cols.risk.pair_of[offering]
        risky = np.flatnonzero(risk >= 0)
        if len(risky):
            which = np.unique(group[risky])
            by_group = np.stack([self._rows[g].base.risk_factor for g in which.tolist()])
            factors[risky] = by_group[np.searchsorted(which, group[risky]), risk[risky]]
        waves = table.work_hours[group] / self.cols.hs23_per_core[offering] * factors
        pairs = _Pairs(group, offering, waves, np.concatenate(fits)[keep])
        rc = _Coefficients.of(self, pairs).reduced_costs(duals, problem.value, phase2)
        good = np.flatnonzero(rc < -TOLERANCE)
        if len(good) == 0:
            return {}
        # per group, the most negative first, ties by catalog position; the first `take` of each
        order = good[np.lexsort((pairs.offering[good], rc[good], pairs.group[good]))]
        g_sorted = pairs.group[order]
        starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        order = order[rank < take]
        chosen_group, chosen = pairs.group[order], pairs.offering[order]
        bounds = np.flatnonzero(np.r_[True, chosen_group[1:] != chosen_group[:-1]])
        return {
            int(chosen_group[a]): np.sort(chosen[a:b])
            for a, b in zip(bounds, np.r_[bounds[1:], len(order)], strict=True)
        }

    def _egress_rows(self, groups: IntArray, cands: Sequence[GroupCandidates]) -> None:
        """Fill the group table's egress rows of `groups` not filled yet."""
        table = self._groups
        assert table is not None
        for g in groups[~table.filled[groups]].tolist():
            egress = self._group_egress(cands[g], g)
            table.usd[g] = self._egress_cost(egress)
            table.budget_usd[g] = egress.budget_usd
            table.gb[g] = egress.gb
            table.filled[g] = True


@dataclass(frozen=True, slots=True)
class _ScreenRows:
    """A group's compatibility, job shape's costs and the reasons and costs of its prefix and of the
    offerings with an allocation's value, as the screen reads them each round."""

    jpu: IntArray
    static: ReasonArray
    base: _Base
    prefix_reasons: ReasonArray  # `static` of the shape's prefix
    valued_total: FloatArray  # of `ColumnGenerator._valued`
    valued_fit: FloatArray
    valued_reasons: ReasonArray


class _GroupTable:
    """What pricing needs of each group, in arrays over the groups (their egress rows filled as needed)."""

    def __init__(self, cands: Sequence[GroupCandidates], gen: ColumnGenerator) -> None:
        n, places = len(cands), len(gen.cols.locations)
        groups = [c.group for c in cands]
        self.demand = np.array([float(max(c.demand, 1)) for c in cands])
        self.window = np.array([gen.ctx.window_hours(g) for g in groups])
        self.work = np.array([max(g.hs23_hours_per_job, 1e-300) for g in groups])
        # HS23-hours of one job's run per core (a run takes this / HS23 per core hours)
        self.work_hours = np.array([g.walltime_hours * g.reference_hs23_per_core for g in groups])
        self.exp = np.array([gen.limits.exp_index[g.experiment] for g in groups], dtype=np.int64)
        # cost caps are per-pair rows of the MILP, not in the jobs LP: such a group keeps its shortlist
        self.priced = np.array(
            [g.max_cost_per_hs23_hour is None or gen.price_capped for g in groups], dtype=bool
        )
        self.usd = np.zeros((n, places))  # egress USD per job, as the master's objective counts it
        self.budget_usd = np.zeros((n, places))
        self.gb = np.zeros((n, places))
        self.filled = np.zeros(n, dtype=bool)


@dataclass(frozen=True, slots=True)
class _Pairs:
    """Columns to price: (group, offering) pairs with the hours a wave of the group's jobs takes on the
    offering (re-runs included) and how many of its jobs a unit runs at once (at least 1)."""

    group: IntArray
    offering: IntArray
    wave_hours: FloatArray
    jpu: FloatArray

    def take(self, at: IntArray) -> _Pairs:
        return _Pairs(self.group[at], self.offering[at], self.wave_hours[at], self.jpu[at])


@dataclass(frozen=True, slots=True)
class _Coefficients:
    """The jobs-LP columns of `pairs`, from the catalog columns: the formulas of `cost.group_costs` and
    `problem.build_problem`/`job_lp`, vectorised over pairs of any groups without building a problem."""

    pairs: _Pairs
    exp: IntArray
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
    def of(cls, gen: ColumnGenerator, pairs: _Pairs) -> _Coefficients:
        """`gen`'s group table must hold the egress rows of the pairs' groups."""
        table, cols, ctx = gen._groups, gen.cols, gen.ctx
        assert table is not None
        g, o = pairs.group, pairs.offering
        d, jpu = table.demand[g], pairs.jpu
        with np.errstate(divide="ignore", invalid="ignore"):
            waves = np.maximum(1.0, np.floor(table.window[g] / pairs.wave_hours))
        per_wave = 1.0 / np.minimum(jpu, d)
        per_unit = 1.0 / np.minimum(jpu * waves, d)
        price, startup, paid = cols.price[o], cols.startup_hours[o], ctx.paid[o]
        loc = cols.location[o]
        per_job_hours = pairs.wave_hours * per_wave + startup * per_unit
        cost = paid * per_job_hours + UNIT_EPSILON * per_unit + table.usd[g, loc]
        return cls(
            pairs=pairs,
            exp=table.exp[g],
            per_unit=per_unit,
            money=price * per_job_hours + table.budget_usd[g, loc],
            hours=np.where(ctx.is_allocation[o], per_job_hours, 0.0),
            cost=np.where(np.isfinite(cost), cost, np.inf),
            price=price,
            cores=cols.cores[o].astype(np.float64),
            gpus=cols.gpu_count[o].astype(np.float64),
            family=cols.family[o],
            gb=table.gb[g, loc],
        )

    def reduced_costs(self, duals: _Duals, value: FloatArray, phase2: bool) -> FloatArray:
        """Per pair; `value`: the master's value per job, per group."""
        g, o, e = self.pairs.group, self.pairs.offering, self.exp
        dual_sum = (
            duals.demand[g]
            + (
                duals.capacity[o]
                + duals.quota[self.family] * self.cores
                + (duals.facility + duals.spend[e]) * self.price
                + duals.gpus[e] * self.gpus
            )
            * self.per_unit
            + duals.budget[e] * self.money
            + duals.egress[e] * self.gb
            + duals.node_hours[o] * self.hours
        )
        if phase2:
            return self.cost - dual_sum + duals.value * value[g]
        return np.where(np.isfinite(self.cost), -value[g] - dual_sum, np.inf)

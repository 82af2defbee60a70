"""The planning instance as a mixed-integer program, and its lexicographic solution with HiGHS.

Variables per candidate pair p = (group g, offering o):
  x_p  units to start (integer),  z_p  unit-waves to pay for (integer),  y_p  jobs to run (integer).
  y_p ≤ jobs_per_unit_p · z_p      a wave of a unit runs at most jobs_per_unit jobs, and is paid whole
  z_p ≤ waves_p · x_p              a unit runs at most `waves` waves within the horizon
  Σ_p∈g y_p ≤ demand_g
  Σ_g x_go ≤ capacity_o;  Σ_family cores·x ≤ quota;  Σ price·x ≤ facility and experiment spend-rate caps;
  Σ_exp (money_wave·z + money_start·x + egress_usd·y) ≤ budget_exp;  Σ_exp egress_gb·y ≤ egress cap;
  Σ_exp gpus·x ≤ GPU limit;  Σ_g (wave_hours·z + startup_hours·x) ≤ allocation node-hours (paced).
  With a group cost cap: objective cost of the pair ≤ cap × HS23-hours of its jobs.
Objective, lexicographic: first serve as much valuable work as the limits allow
(value of a job = share × 2^(priority/10) × its HS23-hours: +10 priority doubles it), then, at that
service level, minimise the objective cost of `cost.py` (money plus allocation value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from provisioner.domain import PlanningConstraints
from provisioner.planner import highs
from provisioner.planner.candidates import GroupCandidates
from provisioner.planner.columns import BoolArray, FloatArray, IntArray, OfferingColumns
from provisioner.planner.cost import FIELDS, GroupCosts, PlanContext
from provisioner.planner.deadline import GUARD
from provisioner.planner.limits import Limits

SAFETY = 1e-9  # relative margin on money limits, so float rounding never breaks a cap checked in Decimal
UNIT_EPSILON = 1e-7  # tiny cost per unit so free units are never started for nothing


@dataclass(frozen=True, slots=True)
class Problem:
    candidates: tuple[GroupCandidates, ...]
    limits: Limits
    demand: IntArray  # per group
    value: FloatArray  # per job, per group, normalised so the largest is 1
    group_exp: IntArray
    pair_group: IntArray
    pair_slot: IntArray  # index into the group's solver shortlist
    pair_offering: IntArray
    jobs_per_unit: IntArray
    waves: IntArray
    money_wave: FloatArray  # USD per unit-wave
    money_start: FloatArray  # USD per unit started
    objective_wave: FloatArray
    objective_start: FloatArray
    egress_usd_job: FloatArray
    egress_budget_job: FloatArray  # egress USD per job as budget rows count it (never under the truth)
    egress_gb_job: FloatArray
    node_hours_wave: FloatArray  # 0 unless an allocation
    node_hours_start: FloatArray
    price: FloatArray
    cores: FloatArray
    gpus: FloatArray
    family: IntArray
    max_cost_job: FloatArray  # the group's max cost per HS23-hour × work per job (inf: no cap)

    @property
    def pairs(self) -> int:
        return len(self.pair_group)

    def restricted(self, keep: BoolArray) -> Problem:
        """The same groups and limits over the pairs in `keep` only (pair order, hence group order, kept)."""
        per_pair = {
            name: getattr(self, name)[keep]
            for name in self.__dataclass_fields__
            if name not in ("candidates", "limits", "demand", "value", "group_exp")
        }
        return replace(self, **per_pair)


@dataclass(frozen=True, slots=True)
class Solution:
    units: IntArray  # x, per pair
    unit_waves: IntArray  # z
    jobs: IntArray  # y
    method: str

    def served_value(self, problem: Problem) -> float:
        return float(np.sum(problem.value[problem.pair_group] * self.jobs))

    def objective(self, problem: Problem) -> float:
        return float(
            np.sum(problem.objective_wave * self.unit_waves)
            + np.sum(problem.objective_start * self.units)
            + np.sum(problem.egress_usd_job * self.jobs)
        )


def job_value(share: float, priority: int, hs23_hours_per_job: float) -> float:
    return share * 2.0 ** (max(-200, min(200, priority)) / 10.0) * hs23_hours_per_job


def build_problem(
    candidates: Sequence[GroupCandidates],
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    constraints: PlanningConstraints,
    limits: Limits,
) -> Problem:
    cands = tuple(candidates)
    demand = np.array([c.demand for c in cands], dtype=np.int64)
    value = np.array(
        [
            job_value(
                lim.share if (lim := constraints.experiments.get(c.group.experiment)) else 1.0,
                c.group.priority,
                c.group.hs23_hours_per_job,
            )
            for c in cands
        ],
        dtype=np.float64,
    )
    if len(value) and value.max() > 0:
        value = value / value.max()
    group_exp = np.array([limits.exp_index[c.group.experiment] for c in cands], dtype=np.int64)
    sizes = np.array([len(c.solver) for c in cands], dtype=np.int64)
    pair_group = np.repeat(np.arange(len(cands), dtype=np.int64), sizes)
    starts = np.cumsum(sizes) - sizes
    pair_slot = np.arange(len(pair_group), dtype=np.int64) - np.repeat(starts, sizes)
    # every shortlist's fields at once (one concatenation, not one per field: 5,000 groups rebuild this
    # each round of catalog pricing)
    costs = GroupCosts(
        np.concatenate([c.solver.data for c in cands], axis=1) if cands else np.zeros((len(FIELDS), 0))
    )
    po = costs.offering
    wave_hours = costs.wave_hours
    paid = cols.price[po]
    objective_rate = paid + plan_ctx.allocation_value[po]
    startup = cols.startup_hours[po]
    is_alloc = plan_ctx.is_allocation[po]
    return Problem(
        candidates=cands,
        limits=limits,
        demand=demand,
        value=value,
        group_exp=group_exp,
        pair_group=pair_group,
        pair_slot=pair_slot,
        pair_offering=po,
        jobs_per_unit=costs.jobs_per_unit,
        waves=costs.waves,
        money_wave=paid * wave_hours,
        money_start=paid * startup,
        objective_wave=objective_rate * wave_hours,
        objective_start=objective_rate * startup,
        egress_usd_job=costs.egress_usd_per_job,
        egress_budget_job=costs.egress_budget_usd_per_job,
        egress_gb_job=costs.egress_gb_per_job,
        node_hours_wave=np.where(is_alloc, wave_hours, 0.0),
        node_hours_start=np.where(is_alloc, startup, 0.0),
        price=paid,
        cores=cols.cores[po].astype(np.float64),
        gpus=cols.gpu_count[po].astype(np.float64),
        family=cols.family[po],
        max_cost_job=np.array(
            [
                float(c.group.max_cost_per_hs23_hour) * c.group.hs23_hours_per_job
                if c.group.max_cost_per_hs23_hour is not None
                else np.inf
                for c in cands
            ]
        )[pair_group]
        if cands
        else np.zeros(0),
    )


class _Rows:
    """Sparse ≤-rows over the 3P variables [x, z, y]."""

    def __init__(self, pairs: int) -> None:
        self.p = pairs
        self.rows: list[IntArray] = []
        self.cols: list[IntArray] = []
        self.vals: list[FloatArray] = []
        self.ub: list[float] = []
        self.index: dict[str, tuple[IntArray, int]] = {}  # block name → (its keys, its first row)

    def block(
        self, keys: IntArray, rhs: FloatArray, terms: Sequence[tuple[int, FloatArray]], name: str = ""
    ) -> None:
        """One row per distinct finite `rhs[keys]`; each pair adds coef·var to its key's row.

        With a `name`, the block's keys and first row are kept in `index` (to read its duals)."""
        if self.p == 0:
            return
        limit = rhs[keys]
        active = np.isfinite(limit)
        if not active.any():
            return
        used, row_of = np.unique(keys[active], return_inverse=True)
        base = len(self.ub)
        if name:
            self.index[name] = (used, base)
        self.ub.extend(np.maximum(rhs[used], 0.0).tolist())  # a fleet already over a limit leaves 0
        pairs = np.flatnonzero(active)
        for var, coef in terms:
            c = coef[pairs]
            nz = c != 0
            self.rows.append(base + row_of[nz])
            self.cols.append(var * self.p + pairs[nz])
            self.vals.append(c[nz])

    def per_pair(self, terms: Sequence[tuple[int, FloatArray]], only: BoolArray | None = None) -> None:
        """One `≤ 0` row per pair (or per pair in `only`)."""
        idx = np.arange(self.p) if only is None else np.flatnonzero(only)
        base = len(self.ub)
        self.ub.extend([0.0] * len(idx))
        for var, coef in terms:
            self.rows.append(base + np.arange(len(idx)))
            self.cols.append(var * self.p + idx)
            self.vals.append(coef[idx])

    def matrix(self) -> tuple[sp.csr_matrix, FloatArray]:
        shape = (len(self.ub), 3 * self.p)
        if not self.rows:
            return sp.csr_matrix(shape), np.asarray(self.ub)
        a = sp.coo_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))), shape=shape
        )
        return a.tocsr(), np.asarray(self.ub, dtype=np.float64)


X, Z, Y = 0, 1, 2


def constraint_matrix(problem: Problem) -> tuple[sp.csr_matrix, FloatArray]:
    pr, lim = problem, problem.limits
    p = pr.pairs
    ones = np.ones(p)
    rows = _Rows(p)
    rows.block(pr.pair_group, pr.demand.astype(np.float64), [(Y, ones)])
    rows.per_pair([(Y, ones), (Z, -pr.jobs_per_unit.astype(np.float64))])
    rows.per_pair([(Z, ones), (X, -pr.waves.astype(np.float64))])
    capped = np.isfinite(pr.max_cost_job)
    if capped.any():  # an item's cost per HS23-hour, partial waves included, stays under the group's cap
        slack = np.where(capped, pr.egress_usd_job - pr.max_cost_job, 0.0)
        rows.per_pair([(Z, pr.objective_wave), (X, pr.objective_start), (Y, slack)], only=capped)
    rows.block(pr.pair_offering, np.floor(lim.capacity + 1e-9), [(X, ones)])
    rows.block(pr.family, lim.quota, [(X, pr.cores)])
    exp = pr.group_exp[pr.pair_group]
    facility = np.array([lim.facility_spend])
    rows.block(np.zeros(p, dtype=np.int64), _shrink(facility), [(X, pr.price)])
    rows.block(exp, _shrink(lim.exp_spend), [(X, pr.price)])
    rows.block(
        exp, _shrink(lim.exp_budget), [(Z, pr.money_wave), (X, pr.money_start), (Y, pr.egress_budget_job)]
    )
    rows.block(exp, _shrink(lim.exp_egress), [(Y, pr.egress_gb_job)])
    rows.block(exp, lim.exp_gpus, [(X, pr.gpus)])
    rows.block(pr.pair_offering, _shrink(lim.node_hours), [(Z, pr.node_hours_wave), (X, pr.node_hours_start)])
    return rows.matrix()


def _shrink(limit: FloatArray) -> FloatArray:
    return np.where(np.isfinite(limit), np.maximum(limit, 0.0) * (1 - SAFETY) - 1e-9, limit)


def variable_bounds(problem: Problem) -> tuple[FloatArray, FloatArray]:
    pr = problem
    demand = pr.demand[pr.pair_group].astype(np.float64)
    max_z = np.ceil(demand / np.maximum(pr.jobs_per_unit, 1))
    max_x = np.ceil(max_z / np.maximum(pr.waves, 1))
    max_x = np.minimum(max_x, np.maximum(np.floor(pr.limits.capacity[pr.pair_offering] + 1e-9), 0))
    upper = np.concatenate([max_x, max_z, demand])
    return np.zeros(3 * pr.pairs), upper


@dataclass(frozen=True, slots=True)
class LexicographicResult:
    """x, z, y of the lexicographic MILP/LP and how far HiGHS got.

    status: "optimal" (both phases proven within the gap), "incumbent" (a time limit stopped a
    phase: the best feasible point found), or "none" (no feasible point before the time limit;
    x, z, y are all zero, which is always feasible)."""

    x: FloatArray
    z: FloatArray
    y: FloatArray
    status: str


class Runs(Protocol):
    def run(self, r: highs.Run) -> highs.Outcome | None: ...


def solve_lexicographic(
    problem: Problem,
    integral: bool,
    time_limit: float | None = None,
    gap: float = 1e-7,
    runs: Runs = GUARD,
) -> LexicographicResult:
    """Solve with HiGHS: maximise served value, then minimise cost at that value.

    Never raises on a time limit: the all-zero plan is always feasible, so the worst outcome is
    status "none" with nothing served. A cost phase cut short by its time limit keeps the value
    phase's point (which serves that value) if its own incumbent is dearer or missing. Not given to
    HiGHS as a start: HiGHS 1.16 then reported the start as optimal with another point's objective
    (nrel-eagle/150/egress of benchmarks/planner_gap.py: 503 for an optimum of 5.18). `time_limit`
    holds for each phase, and `runs` (the guard process of `planner/deadline.py`) makes it hold where
    HiGHS overruns it: a phase it kills counts as stopped by its limit with nothing found. Each phase is
    a model of its own (HiGHS starts a MIP afresh after a change anyway)."""
    p = problem.pairs
    if p == 0:
        return LexicographicResult(np.zeros(0), np.zeros(0), np.zeros(0), "optimal")
    a, ub = constraint_matrix(problem)
    lb_var, ub_var = variable_bounds(problem)
    value = problem.value[problem.pair_group]
    c1 = np.concatenate([np.zeros(p), np.zeros(p), -value])
    first = runs.run(highs.Run(c1, a, ub, lb_var, ub_var, integral, time_limit, gap))
    if first is None or first.x is None:
        if first is None or first.status == highs.LIMIT:
            return LexicographicResult(np.zeros(p), np.zeros(p), np.zeros(p), "none")
        raise PlanningError(f"HiGHS found no feasible plan in phase 1: {first.status}")
    status = "optimal" if first.status == highs.OPTIMAL else "incumbent"
    served = float(value @ first.x[2 * p :])
    if served <= 0:
        return LexicographicResult(np.zeros(p), np.zeros(p), np.zeros(p), status)
    # float noise only: half the least value per job (the tolerance until 2026-12-02) let the cost phase swap
    # one job worth 0.42 for three worth 0.125 each, 5 % less value for less cost (tests/planner/
    # test_lexicographic.py, seed 995)
    tolerance = served * 1e-9
    c2 = np.concatenate(
        [problem.objective_start + UNIT_EPSILON, problem.objective_wave, problem.egress_usd_job]
    )
    # −value·y ≤ −served, as a ≤ row like the others
    a2 = sp.vstack([a, sp.csr_matrix(c1)], format="csr")
    ub2 = np.append(ub, -(served - tolerance))
    second = runs.run(highs.Run(c2, a2, ub2, lb_var, ub_var, integral, time_limit, gap))
    x = first.x if second is None or second.x is None else second.x
    if second is None or second.status != highs.OPTIMAL:
        status = "incumbent"
    if status == "incumbent" and c2 @ first.x < c2 @ x:  # cut short at a point dearer than where it began
        x = first.x
    return LexicographicResult(x[:p], x[p : 2 * p], x[2 * p :], status)


def _per_job(problem: Problem) -> tuple[FloatArray, FloatArray]:
    """Unit-waves and units per job when a pair runs jobs in whole waves and units.

    A wave holds jobs_per_unit jobs, but a group with fewer jobs pays the whole wave for what it
    has: the relaxation charges per job as if the pair took the whole group (exact then), so that
    small groups are not sent to big units whose waves they would leave mostly empty."""
    demand = np.maximum(problem.demand[problem.pair_group], 1).astype(np.float64)
    jpu = np.maximum(problem.jobs_per_unit, 1).astype(np.float64)
    per_wave_jobs = np.minimum(jpu, demand)
    per_unit_jobs = np.minimum(jpu * np.maximum(problem.waves, 1), demand)
    return 1.0 / per_wave_jobs, 1.0 / per_unit_jobs


def job_rows(problem: Problem) -> tuple[sp.csr_matrix, FloatArray]:
    """The limits in terms of jobs only: the LP relaxation with units = jobs / (jobs_per_unit × waves)."""
    a, ub, _ = job_lp(problem)
    return a, ub


def job_lp(problem: Problem) -> tuple[sp.csr_matrix, FloatArray, dict[str, tuple[IntArray, int]]]:
    """`job_rows` and, per kind of limit, which keys (group, offering, family, experiment) have a row where."""
    pr, lim = problem, problem.limits
    p = pr.pairs
    per_wave, per_unit = _per_job(pr)
    rows = _Rows(p)
    exp = pr.group_exp[pr.pair_group]
    rows.block(pr.pair_group, pr.demand.astype(np.float64), [(0, np.ones(p))], "demand")
    rows.block(pr.pair_offering, np.floor(lim.capacity + 1e-9), [(0, per_unit)], "capacity")
    rows.block(pr.family, lim.quota, [(0, pr.cores * per_unit)], "quota")
    rows.block(
        np.zeros(p, dtype=np.int64),
        _shrink(np.array([lim.facility_spend])),
        [(0, pr.price * per_unit)],
        "facility",
    )
    rows.block(exp, _shrink(lim.exp_spend), [(0, pr.price * per_unit)], "spend")
    money = pr.money_wave * per_wave + pr.money_start * per_unit + pr.egress_budget_job
    rows.block(exp, _shrink(lim.exp_budget), [(0, money)], "budget")
    rows.block(exp, _shrink(lim.exp_egress), [(0, pr.egress_gb_job)], "egress")
    rows.block(exp, lim.exp_gpus, [(0, pr.gpus * per_unit)], "gpus")
    hours = pr.node_hours_wave * per_wave + pr.node_hours_start * per_unit
    rows.block(pr.pair_offering, _shrink(lim.node_hours), [(0, hours)], "node_hours")
    a, ub = rows.matrix()
    return a[:, :p].tocsr(), ub, rows.index


def job_cost(problem: Problem) -> FloatArray:
    """Objective cost per job of each pair in the jobs-only relaxation (whole waves for small groups)."""
    per_wave, per_unit = _per_job(problem)
    return (
        problem.objective_wave * per_wave
        + (problem.objective_start + UNIT_EPSILON) * per_unit
        + problem.egress_usd_job
    )


class PlanningError(RuntimeError):
    """The solver failed on an instance it should always be able to solve (all-zero is always feasible)."""

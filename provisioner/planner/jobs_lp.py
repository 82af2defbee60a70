"""The jobs-only LP relaxation (`problem.job_lp`) in one HiGHS model, solved lexicographically: the most
value first, then the least cost of serving (almost) that much.

The cost phase only changes the objective and adds the served-value row, which the value phase's
optimum meets, so that optimum's basis stays primal feasible and the primal simplex starts from it
instead of from scratch. On the 5,000-group LP of benchmarks/planner_scale.py (measured 2026-12-01,
median of 3): the value phase takes 0.89 s with the primal simplex and 0.86 s with the dual, but the
cost phase then takes 0.33 s from the primal's basis, against 0.96 s or more from the dual's and 0.89 s cold.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from provisioner.planner.columns import FloatArray, IntArray
from provisioner.planner.highs import model, solver
from provisioner.planner.problem import PlanningError, Problem, job_cost, job_lp

PRIMAL_SIMPLEX = 4  # HiGHS's simplex_strategy for the primal simplex
DUAL_SIMPLEX = 1
MAX_VALUE_SCALING = 4  # HiGHS's simplex_scale_strategy
SERVED_SLACK = 1e-9  # the cost phase serves at least this much less than asked, for float noise


_STATUSES = {int(v): v for v in highspy.HighsBasisStatus.__members__.values()}
_BASIC = int(highspy.HighsBasisStatus.kBasic)
_LOWER = int(highspy.HighsBasisStatus.kLower)


@dataclass(frozen=True, slots=True)
class Basis:
    """A solved model's simplex basis keyed by what its columns and rows stand for, so that the model of a
    problem with more pairs (column generation's next round) can start from it: its pairs as
    group × offerings + offering (sorted), its rows per kind of limit by key, the served-value row's."""

    pair_keys: IntArray
    pair_status: IntArray  # per sorted key
    rows: dict[str, tuple[IntArray, IntArray]]  # per kind of limit: its keys, their rows' statuses
    value_row: int | None  # the served-value row's status (cost phase), None without one


def _statuses(found: list[highspy.HighsBasisStatus]) -> IntArray:
    return np.fromiter(map(int, found), dtype=np.int64, count=len(found))


def _pair_keys(problem: Problem) -> IntArray:
    return problem.pair_group * len(problem.limits.capacity) + problem.pair_offering


def _carried(keys: IntArray, old_keys: IntArray, old_status: IntArray, missing: int) -> IntArray:
    """The statuses of `keys` in a sorted `old_keys`, `missing` for keys it lacks."""
    if len(old_keys) == 0:
        return np.full(len(keys), missing, dtype=np.int64)
    at = np.minimum(np.searchsorted(old_keys, keys), len(old_keys) - 1)
    return np.where(old_keys[at] == keys, old_status[at], missing)


@dataclass(frozen=True, slots=True)
class LpResult:
    x: FloatArray  # jobs per pair
    row_duals: FloatArray  # one per row of `job_lp`, then (cost phase) the served-value row's
    index: dict[str, tuple[IntArray, int]]  # `job_lp`'s rows per kind of limit


class JobsLp:
    """One problem's jobs LP: `solve(None)` for the most value, then `solve(served)` for the least cost
    of serving at least `served` (warm when the value phase ran on this model)."""

    def __init__(self, problem: Problem, start: Basis | None = None) -> None:
        """`start`: the basis of an earlier model whose pairs this problem's include (pairs and rows it
        lacks start nonbasic at 0 and basic), where the first solve starts: the old optimum with the new
        pairs at 0 is feasible, so the primal simplex only prices the new pairs in (on the 5,000-group
        instance of benchmarks/planner_scale.py, 63,062 pairs, a re-solve after 21 added pairs took
        1.2 s from nothing)."""
        self.problem = problem
        self._start = start
        self.started_warm = False  # HiGHS took `start` as the first solve's basis
        a, ub, self.index = job_lp(problem)
        self.value = problem.value[problem.pair_group]
        self._solved = False  # a basis is there to start from
        self._value_row: int | None = None
        h = solver()
        # scaled by each row's and column's largest value (4), not HiGHS's default equilibration (2): the warm
        # starts of column generation take far fewer simplex iterations: `python -m benchmarks.planner_ab
        # --base aa79dfc` planned the 5,000 groups of benchmarks/planner_scale.py in 0.80x, 0.85x and 0.92x
        # the time (three runs; 720 groups 0.88x, 0.98x and 0.99x: within noise)
        h.setOptionValue("simplex_scale_strategy", MAX_VALUE_SCALING)
        lp = model(
            -self.value,
            a,
            np.asarray(ub, dtype=np.float64),
            np.zeros(problem.pairs),
            problem.demand[problem.pair_group].astype(np.float64),
        )
        h.passModel(lp)
        self._h = h

    def solve(self, served: float | None) -> LpResult | None:
        """The value phase (served is None) or the cost phase at `served`; None if HiGHS finds no optimum."""
        h, p = self._h, self.problem.pairs
        if p == 0:
            return None
        every = np.arange(p, dtype=np.int32)
        if served is None:
            h.changeColsCost(p, every, -self.value)
            if self._value_row is not None:
                h.changeRowBounds(self._value_row, -highspy.kHighsInf, highspy.kHighsInf)
            strategy = PRIMAL_SIMPLEX
        else:
            h.changeColsCost(p, every, job_cost(self.problem))
            # −value·y ≤ −served, as a ≤ row like the others, so its dual has their sign
            if self._value_row is None:
                self._value_row = h.getNumRow()
                h.addRow(-highspy.kHighsInf, -served, p, every, -self.value)
            else:
                h.changeRowBounds(self._value_row, -highspy.kHighsInf, -served)
            # from the value phase's basis the primal simplex starts feasible; from nothing, the value row
            # makes the start infeasible, where the dual simplex is the faster
            strategy = PRIMAL_SIMPLEX if self._solved else DUAL_SIMPLEX
        warm = self._solved
        if not self._solved and self._start is not None:
            warm = self.started_warm = self._warm(self._start, served is not None)
            strategy = PRIMAL_SIMPLEX if warm else strategy
        h.setOptionValue("simplex_strategy", strategy)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal and warm:
            # the warm start can stall ("Unknown" from the primal simplex, tests/planner/test_jobs_lp.py
            # seed 192) where the same LP solved from nothing is optimal: retry from nothing once
            h.clearSolver()
            h.setOptionValue("simplex_strategy", DUAL_SIMPLEX)
            h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        self._solved = True
        solution = h.getSolution()
        return LpResult(
            np.asarray(solution.col_value, dtype=np.float64),
            np.asarray(solution.row_dual, dtype=np.float64),
            self.index,
        )

    def basis(self) -> Basis | None:
        """This model's basis after a solve, keyed for a bigger model (None before one)."""
        if not self._solved:
            return None
        found = self._h.getBasis()
        cols, rows = _statuses(found.col_status), _statuses(found.row_status)
        keys = _pair_keys(self.problem)
        order = np.argsort(keys, kind="stable")
        by_kind = {name: (k, rows[base : base + len(k)]) for name, (k, base) in self.index.items()}
        value_row = None if self._value_row is None else int(rows[self._value_row])
        return Basis(keys[order], cols[order], by_kind, value_row)

    def _warm(self, start: Basis, cost_phase: bool) -> bool:
        """Set `start` mapped onto this model as its basis; False when HiGHS refuses it."""
        h = self._h
        cols = _carried(_pair_keys(self.problem), start.pair_keys, start.pair_status, _LOWER)
        rows = np.full(h.getNumRow(), _BASIC, dtype=np.int64)
        for name, (keys, base) in self.index.items():
            old = start.rows.get(name)
            if old is not None:
                rows[base : base + len(keys)] = _carried(keys, old[0], old[1], _BASIC)
        if self._value_row is not None and cost_phase and start.value_row is not None:
            rows[self._value_row] = start.value_row
        basis = highspy.HighsBasis()
        basis.col_status = [_STATUSES[v] for v in cols.tolist()]
        basis.row_status = [_STATUSES[v] for v in rows.tolist()]
        basis.valid = True
        return h.setBasis(basis) == highspy.HighsStatus.kOk


def solve_jobs_lp(problem: Problem) -> FloatArray:
    """Jobs per pair of the lexicographic LP relaxation in jobs only (small and fast: one variable a pair)."""
    if problem.pairs == 0:
        return np.zeros(0)
    lp = JobsLp(problem)
    first = lp.solve(None)
    if first is None:
        raise PlanningError("HiGHS found no optimal LP relaxation in phase 1")
    served = float(lp.value @ first.x)
    if served <= 0:
        return np.zeros(problem.pairs)
    second = lp.solve(served * (1 - SERVED_SLACK))
    return (second or first).x


def least_cost(problem: Problem, served: float) -> float | None:
    """The jobs LP's least cost of serving at least `served` (its cost phase alone, cold); None when
    HiGHS finds no optimum (`served` above what the LP can serve)."""
    if problem.pairs == 0:
        return 0.0 if served <= 0 else None
    found = JobsLp(problem).solve(served * (1 - SERVED_SLACK))
    return None if found is None else float(job_cost(problem) @ found.x)

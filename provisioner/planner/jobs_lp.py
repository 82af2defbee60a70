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
import scipy.sparse as sp

from provisioner.planner.columns import BoolArray, FloatArray, IntArray
from provisioner.planner.highs import model, solver
from provisioner.planner.problem import PlanningError, Problem, job_cost, job_lp

PRIMAL_SIMPLEX = 4  # HiGHS's simplex_strategy for the primal simplex
DUAL_SIMPLEX = 1
MAX_VALUE_SCALING = 4  # HiGHS's simplex_scale_strategy
SERVED_SLACK = 1e-9  # the cost phase serves at least this much less than asked, for float noise


_EMPTY = np.zeros(0, dtype=np.int64)


def _pair_keys(problem: Problem) -> IntArray:
    return problem.pair_group * len(problem.limits.capacity) + problem.pair_offering


def _find(keys: IntArray, sorted_keys: IntArray) -> tuple[IntArray, BoolArray]:
    """Positions of `keys` in `sorted_keys` (clipped), and which are there."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return at, sorted_keys[at] == keys


@dataclass(frozen=True, slots=True)
class LpResult:
    x: FloatArray  # jobs per pair
    # per kind of limit of `job_lp`: its rows' keys and their duals
    duals: dict[str, tuple[IntArray, FloatArray]]
    value_dual: float  # the served-value row's (cost phase; 0 in the value phase)


class JobsLp:
    """One problem's jobs LP: `solve(None)` for the most value, then `solve(served)` for the least cost
    of serving at least `served` (warm when the value phase ran on this model); `grow` makes it the model
    of a problem with more pairs (column generation's next round), kept warm."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        a, ub, index = job_lp(problem)
        self.value = problem.value[problem.pair_group]
        self._solved = False  # a basis is there to start from
        self._value_row: int | None = None
        # per kind of limit: its rows' keys (sorted) and the rows; per model column its pair's key, and per
        # pair of `problem` its column (columns `grow` adds come last, pairs in the problem's order)
        self._rows = {name: (keys, base + np.arange(len(keys))) for name, (keys, base) in index.items()}
        self._keys = _pair_keys(problem)
        self._column = np.arange(problem.pairs, dtype=np.int32)
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

    def grow(self, problem: Problem) -> None:
        """Make this the model of `problem`, whose pairs are this model's and more (pricing only adds): the
        new pairs become columns at the end, with rows for the limits only they reach. HiGHS keeps its
        basis (new columns nonbasic at 0, new rows basic), where the last optimum is still feasible, so the
        primal simplex only prices the new columns in. Against a new model started from the old basis, this
        saves building the model and mapping the basis (0.4-0.5 s of 2.5-2.9 s of pricing on the 5,000-group
        instance of benchmarks/planner_scale.py)."""
        keys = _pair_keys(problem)
        order = np.argsort(self._keys, kind="stable")
        at, old = _find(keys, self._keys[order])
        if int(old.sum()) != len(self._keys):
            raise ValueError("grow: the problem lacks pairs of this model (pricing only adds pairs)")
        new = np.flatnonzero(~old)
        column = np.empty(problem.pairs, dtype=np.int32)
        column[old] = order[at[old]]
        column[new] = len(self._keys) + np.arange(len(new))
        if len(new):
            self._add_columns(problem.restricted(~old))
        self.problem, self.value = problem, problem.value[problem.pair_group]
        self._keys = np.concatenate((self._keys, keys[new]))
        self._column = column

    def _add_columns(self, sub: Problem) -> None:
        """`sub`'s pairs as new columns (after new rows for the keys of limits the model has no row for)."""
        h = self._h
        a, ub, index = job_lp(sub)
        row_of = np.empty(a.shape[0], dtype=np.int64)
        first_new = next_row = h.getNumRow()
        new_ub: list[FloatArray] = []
        for name, (keys, base) in index.items():
            have_keys, have_rows = self._rows.get(name, (_EMPTY, _EMPTY))
            at, there = _find(keys, have_keys)
            row_of[base + np.flatnonzero(there)] = have_rows[at[there]]
            fresh = np.flatnonzero(~there)
            rows = next_row + np.arange(len(fresh))
            row_of[base + fresh] = rows
            next_row += len(fresh)
            new_ub.append(ub[base + fresh])
            if len(fresh):
                merged_keys = np.concatenate((have_keys, keys[fresh]))
                merged_rows = np.concatenate((have_rows, rows))
                by_key = np.argsort(merged_keys, kind="stable")
                self._rows[name] = (merged_keys[by_key], merged_rows[by_key])
        if next_row > first_new:
            count = next_row - first_new
            empty = np.zeros(0, dtype=np.int32)
            h.addRows(
                count,
                np.full(count, -highspy.kHighsInf),
                np.concatenate(new_ub),  # job_lp's bounds, already at least 0
                0,
                np.zeros(count, dtype=np.int32),
                empty,
                np.zeros(0),
            )
        coo = sp.coo_matrix(a)
        n = sub.pairs
        rows, cols, vals = row_of[coo.row], coo.col.astype(np.int64), coo.data.astype(np.float64)
        if self._value_row is not None:  # the served-value row of the cost phase: −value·y
            rows = np.concatenate((rows, np.full(n, self._value_row)))
            cols = np.concatenate((cols, np.arange(n)))
            vals = np.concatenate((vals, -sub.value[sub.pair_group]))
        csc = sp.csc_matrix((vals, (rows, cols)), shape=(next_row, n))
        h.addCols(
            n,
            np.zeros(n),
            np.zeros(n),
            sub.demand[sub.pair_group].astype(np.float64),
            csc.nnz,
            csc.indptr[:-1].astype(np.int32),
            csc.indices.astype(np.int32),
            csc.data.astype(np.float64),
        )

    def solve(self, served: float | None) -> LpResult | None:
        """The value phase (served is None) or the cost phase at `served`; None if HiGHS finds no optimum."""
        h, p = self._h, self.problem.pairs
        if p == 0:
            return None
        columns = self._column
        if served is None:
            h.changeColsCost(p, columns, -self.value)
            if self._value_row is not None:
                h.changeRowBounds(self._value_row, -highspy.kHighsInf, highspy.kHighsInf)
            strategy = PRIMAL_SIMPLEX
        else:
            h.changeColsCost(p, columns, job_cost(self.problem))
            # −value·y ≤ −served, as a ≤ row like the others, so its dual has their sign
            if self._value_row is None:
                self._value_row = h.getNumRow()
                h.addRow(-highspy.kHighsInf, -served, p, columns, -self.value)
            else:
                h.changeRowBounds(self._value_row, -highspy.kHighsInf, -served)
            # from the value phase's basis the primal simplex starts feasible; from nothing, the value row
            # makes the start infeasible, where the dual simplex is the faster
            strategy = PRIMAL_SIMPLEX if self._solved else DUAL_SIMPLEX
        warm = self._solved
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
        row_dual = np.asarray(solution.row_dual, dtype=np.float64)
        return LpResult(
            np.asarray(solution.col_value, dtype=np.float64)[columns],
            {name: (keys, row_dual[rows]) for name, (keys, rows) in self._rows.items()},
            0.0 if served is None or self._value_row is None else float(row_dual[self._value_row]),
        )


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

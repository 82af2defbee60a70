"""HiGHS through highspy for the planner: a silent, single-threaded solver and models built from arrays.

The bare `_Highs` class: `highspy.Highs()` prints its banner before `output_flag` can be set. One
thread: HiGHS's thread pool is per process and refuses a model asking for another size once it runs,
and the reference (benchmarks/reference_milp.py) asks for one thread in the same process."""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp
from highspy._core import _Highs

from provisioner.planner.columns import FloatArray

INF = highspy.kHighsInf
FEASIBLE = 2  # HiGHS's primal_solution_status of a feasible point
OPTIMAL = "optimal"
LIMIT = "time limit"  # a time or iteration limit stopped the run
_LIMITS = (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kIterationLimit)


def solver() -> _Highs:
    h = _Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    return h


def model(
    cost: FloatArray,
    rows: sp.spmatrix,
    row_upper: FloatArray,
    col_lower: FloatArray,
    col_upper: FloatArray,
    *,
    integral: bool = False,
) -> highspy.HighsLp:
    """min cost·x subject to rows·x ≤ row_upper, col_lower ≤ x ≤ col_upper (x integral if asked)."""
    csc = sp.csc_matrix(rows)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), csc.shape[0]
    lp.col_cost_ = np.asarray(cost, dtype=np.float64)
    lp.col_lower_ = np.asarray(col_lower, dtype=np.float64)
    lp.col_upper_ = np.asarray(col_upper, dtype=np.float64)
    lp.row_lower_ = np.full(csc.shape[0], -INF)
    lp.row_upper_ = np.asarray(row_upper, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
    lp.a_matrix_.index_ = csc.indices.astype(np.int32)
    lp.a_matrix_.value_ = csc.data.astype(np.float64)
    if integral:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * len(cost)
    return lp


@dataclass(frozen=True, slots=True)
class Run:
    """One solve of min cost·x s.t. rows·x ≤ row_upper, bounds, as plain arrays: picklable, so that it can
    run in another process (`planner/deadline.py`). `time_limit`: HiGHS's, in seconds (None: none)."""

    cost: FloatArray
    rows: sp.csr_matrix
    row_upper: FloatArray
    col_lower: FloatArray
    col_upper: FloatArray
    integral: bool
    time_limit: float | None
    gap: float  # mip_rel_gap


@dataclass(frozen=True, slots=True)
class Outcome:
    x: FloatArray | None  # the best feasible point found; None without one
    status: str  # OPTIMAL, LIMIT, or HiGHS's word for another end ("Infeasible", ...)


def run(r: Run) -> Outcome:
    h = solver()
    h.setOptionValue("mip_rel_gap", r.gap)
    if r.time_limit is not None:
        h.setOptionValue("time_limit", float(r.time_limit))
    h.passModel(model(r.cost, r.rows, r.row_upper, r.col_lower, r.col_upper, integral=r.integral))
    h.run()
    if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
        # HiGHS 1.16's presolve can call a feasible model infeasible (tests/planner/test_lexicographic.py,
        # seed 276: a cost phase whose value phase's point is 2e-8 over a row): without it, it solves
        h.clearSolver()
        h.setOptionValue("presolve", "off")
        h.run()
    stopped = h.getModelStatus()
    status = (
        OPTIMAL
        if stopped == highspy.HighsModelStatus.kOptimal
        else LIMIT
        if stopped in _LIMITS
        else h.modelStatusToString(stopped)
    )
    found = h.getInfo().primal_solution_status == FEASIBLE
    return Outcome(np.asarray(h.getSolution().col_value, dtype=np.float64) if found else None, status)

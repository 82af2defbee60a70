"""HiGHS through highspy for the planner: a silent, single-threaded solver and models built from arrays.

The bare `_Highs` class: `highspy.Highs()` prints its banner before `output_flag` can be set. One
thread: HiGHS's thread pool is per process and refuses a model asking for another size once it runs,
and the reference (benchmarks/reference_milp.py) asks for one thread in the same process."""

from __future__ import annotations

import highspy
import numpy as np
import scipy.sparse as sp
from highspy._core import _Highs

from provisioner.planner.columns import FloatArray

INF = highspy.kHighsInf
FEASIBLE = 2  # HiGHS's primal_solution_status of a feasible point


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

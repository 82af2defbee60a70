"""Numerics that give the same bits on every CPU, so that the same inputs give the same plan everywhere.

numpy picks its kernels by CPU at run time: on AVX-512 its `expm1`, `exp`, `log` and `power` return
other last bits than on AVX2 (sometimes by an element's position in the array), and its SIMD
`argpartition` picks other elements among equal ones. Either flips the planner's choice between
offerings that cost the same (`provisioner demo` printed lsst $28.84 on one machine and $28.99 on
another). Sums of products in +, −, × and ÷ are correctly rounded whatever the kernel, so these are
built from them.
"""

from __future__ import annotations

import numpy as np

from provisioner.planner.columns import FloatArray, IntArray

_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k·_LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
# 1/n! for n = 2..14: the Taylor series of expm1(r) − r, |r| ≤ ln2/2, to a relative 1e-17
_TAYLOR = tuple(1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64))) for n in range(2, 15))


def expm1(x: FloatArray) -> FloatArray:
    """e^x − 1 for 0 ≤ x ≤ 700, within a few units in the last place of the true value, and the same
    bits on every CPU: x = k·ln2 + r with |r| ≤ ln2/2, expm1(r) by its Taylor series (Horner), then
    expm1(x) = 2^k·expm1(r) + (2^k − 1)."""
    x = np.asarray(x, dtype=np.float64)
    k = np.rint(x / (_LN2_HI + _LN2_LO))
    # in place where it can be: the same operations in the same order (the same bits), fewer arrays
    r = x - k * _LN2_HI
    r -= k * _LN2_LO
    poly = r * _TAYLOR[-1]
    poly += _TAYLOR[-2]
    for c in reversed(_TAYLOR[:-2]):
        poly *= r
        poly += c
    small = r * r
    small *= poly
    small += r  # expm1(r)
    ki = k.astype(np.int64)
    out = np.ldexp(small, ki)
    scale = np.ldexp(1.0, ki)
    scale -= 1.0
    out += scale
    return out


def smallest(values: FloatArray, k: int) -> IntArray:
    """Positions of the k smallest `values`, smallest first, equal values by position: what a stable
    argsort's first k are, in linear time plus a sort of the few at or under the k-th value."""
    n = len(values)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.argsort(values, kind="stable")
    kth = np.partition(values, k - 1)[k - 1]  # the k-th smallest value is one number on every CPU
    if np.isnan(kth):
        return np.argsort(values, kind="stable")[:k]
    near = np.flatnonzero(values <= kth)
    return near[np.argsort(values[near], kind="stable")][:k]


def smallest_and_next(values: FloatArray, k: int) -> tuple[IntArray, float]:
    """`smallest(values, k)` and the (k+1)-th smallest value, from one partition (k < len(values))."""
    part = np.partition(values, (k - 1, k))
    kth, after = part[k - 1], float(part[k])
    if np.isnan(kth):
        return np.argsort(values, kind="stable")[:k], after
    near = np.flatnonzero(values <= kth)
    return near[np.argsort(values[near], kind="stable")][:k], after

"""Egress pricing with marginal tiers: each GB costs its own tier's rate given what was used this period."""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from provisioner.domain import EgressRoute, EgressTier

# enough digits that sums of float-derived amounts stay exact, so cost(a) + cost(b | a) == cost(a + b)
_EXACT = decimal.Context(prec=80)


def _dec(value: float | int | Decimal) -> Decimal:
    # str() of a float is its shortest round-trip form: 0.1 → Decimal("0.1"), not 0.1000000000000000055…
    return value if isinstance(value, Decimal) else Decimal(str(value))


def marginal_egress_cost(
    gb: float | int | Decimal, already_used_gb: float | int | Decimal, tiers: Sequence[EgressTier]
) -> Decimal:
    """USD for moving `gb` more when `already_used_gb` were moved earlier this period (exact).

    Tier i covers (edge[i−1], edge[i]] of the period's cumulative volume; a tier without `up_to_gb`
    is open-ended. GB beyond the last edge of tiers that all have edges cost the last tier's rate.
    """
    amount, start = _dec(gb), _dec(already_used_gb)
    if amount < 0 or start < 0:
        raise ValueError(f"gb and already_used_gb must be ≥ 0, got {gb} and {already_used_gb}")
    if not tiers or amount == 0:
        return Decimal(0)
    end = _EXACT.add(start, amount)
    total = Decimal(0)
    low = Decimal(0)
    for index, tier in enumerate(tiers):
        last = index == len(tiers) - 1
        high = None if tier.up_to_gb is None or last else _dec(tier.up_to_gb)
        top = end if high is None else min(end, high)
        bottom = max(start, low)
        if top > bottom:
            total = _EXACT.add(total, _EXACT.multiply(_EXACT.subtract(top, bottom), tier.usd_per_gb))
        if high is None or high >= end:
            break
        low = high
    return total


def tier_arrays(tiers: Sequence[EgressTier]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(lower edges, upper edges, with +inf for the open or last tier) and rates as float arrays."""
    lows, highs, rates = [], [], []
    low = 0.0
    for index, tier in enumerate(tiers):
        last = index == len(tiers) - 1
        high = np.inf if tier.up_to_gb is None or last else float(tier.up_to_gb)
        lows.append(low)
        highs.append(high)
        rates.append(float(tier.usd_per_gb))
        low = high
    edges = np.array([lows, highs], dtype=np.float64)
    return edges, np.array(rates, dtype=np.float64)


def marginal_egress_cost_array(
    gb: npt.ArrayLike, already_used_gb: npt.ArrayLike, tiers: Sequence[EgressTier]
) -> npt.NDArray[np.float64]:
    """Float, vectorised `marginal_egress_cost` for the planner's inner loops (broadcasts its inputs).

    Use the Decimal version for anything that is billed or recorded.
    """
    amount = np.asarray(gb, dtype=np.float64)
    start = np.asarray(already_used_gb, dtype=np.float64)
    if not tiers:
        return np.zeros(np.broadcast(amount, start).shape)
    edges, rates = tier_arrays(tiers)
    end = (start + amount)[..., None]
    overlap = np.minimum(end, edges[1]) - np.maximum(start[..., None], edges[0])
    return np.asarray(np.clip(overlap, 0.0, None) @ rates, dtype=np.float64)


def find_route(source: str, destination: str, routes: Sequence[EgressRoute]) -> EgressRoute | None:
    """The first route from `source` to exactly `destination`, else the first from `source` to "*"."""
    wildcard = None
    for route in routes:
        if route.source != source:
            continue
        if route.destination == destination:
            return route
        if route.destination == "*" and wildcard is None:
            wildcard = route
    return wildcard

"""The shortlist helpers' fast paths agree with their plain definitions (hypothesis): a faster costing
phase must not change a single shortlist."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.planner.candidates import _merge, _spread_families, packed_total
from provisioner.planner.cost import FIELDS, GroupCosts


def spread_by_definition(fam: list[int], top_k: int, per_family: int) -> list[int]:
    """The first top_k positions whose offering is among the per_family cheapest of its family."""
    rank = [fam[:pos].count(f) for pos, f in enumerate(fam)]
    return [pos for pos in range(len(fam)) if rank[pos] < per_family][:top_k]


# few families, so that long runs of one family (the numpy path) occur as well as spread ones
families = st.lists(st.integers(min_value=0, max_value=5), max_size=200)


@settings(max_examples=300, deadline=None)
@given(fam=families, top_k=st.integers(min_value=0, max_value=20), per_family=st.integers(0, 4))
def test_spread_families_is_the_rank_rule(fam: list[int], top_k: int, per_family: int) -> None:
    got = _spread_families(np.array(fam, dtype=np.int64), top_k, per_family)
    assert got.dtype == np.int64
    assert got.tolist() == spread_by_definition(fam, top_k, per_family)


def costs_of(offerings: list[int], totals: list[float]) -> GroupCosts:
    data = np.ones((len(FIELDS), len(offerings)))
    data[0] = offerings
    data[10] = data[5] = totals  # compute = total: the packed cost orders as the total does
    data[6:10] = 0.0
    return GroupCosts(data)


prices = st.floats(min_value=0.01, max_value=10.0)


@settings(max_examples=200, deadline=None)
@given(
    short=st.dictionaries(st.integers(0, 30), prices, max_size=12),
    extra=st.dictionaries(st.integers(0, 30), prices, max_size=12),
    demand=st.integers(min_value=0, max_value=50),
)
def test_merge_keeps_each_offering_once_cheapest_first(
    short: dict[int, float], extra: dict[int, float], demand: int
) -> None:
    a = costs_of(list(short), list(short.values()))
    b = costs_of(list(extra), list(extra.values()))
    merged = _merge(a, b, demand)
    new = [o for o in extra if o not in short]
    both = costs_of([*short, *new], [*short.values(), *(extra[o] for o in new)])
    order = np.argsort(packed_total(both, demand), kind="stable")
    assert np.array_equal(merged.data, both.data[:, order])

"""The shortlist helpers' fast paths agree with their plain definitions (hypothesis): a faster costing
phase must not change a single shortlist."""

from __future__ import annotations

import random
from dataclasses import replace
from types import SimpleNamespace
from typing import cast
from unittest.mock import patch

import numpy as np
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from provisioner.domain import DemandGroup
from provisioner.planner import _Clock, _prepare, _Setup, candidates
from provisioner.planner.candidates import (
    GroupCandidates,
    _Base,
    _cheapest,
    _cheapest_of,
    _egress_window,
    _full_total,
    _light,
    _light_many,
    _merge_many,
    _merge_packed,
    _prefix_cheapest,
    _RateIndex,
    _select,
    _select_many,
    _spread_families,
    _window,
    build_candidates,
    packed_total,
)
from provisioner.planner.columns import FloatArray, OfferingColumns
from provisioner.planner.cost import FIELDS, GroupCosts, GroupEgress
from provisioner.planner.numerics import smallest_and_next
from tests.planner.instances import random_instance


def spread_by_definition(fam: list[int], top_k: int, per_family: int) -> list[int]:
    """The first top_k positions whose offering is among the per_family cheapest of its family."""
    rank = [fam[:pos].count(f) for pos, f in enumerate(fam)]
    return [pos for pos in range(len(fam)) if rank[pos] < per_family][:top_k]


# few families, so that long runs of one family (a shortlist reaching past the first slice read) occur as
# well as spread ones
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
    merged, packed = _merge_packed((a, packed_total(a, demand)), (b, packed_total(b, demand)))
    new = [o for o in extra if o not in short]
    both = costs_of([*short, *new], [*short.values(), *(extra[o] for o in new)])
    order = np.argsort(packed_total(both, demand), kind="stable")
    assert np.array_equal(merged.data, both.data[:, order])
    # the packed costs merge with their offerings (pricing keeps them per group as it adds columns)
    assert np.array_equal(packed, packed_total(merged, demand))


def shortlist_costs(draw: st.DrawFn, families: int) -> tuple[GroupCosts, int, float]:
    """Usable offerings of one group: small whole costs (ties between offerings are common), jobs per unit,
    waves and start-up that make packing at the group's size matter, a family each; its demand and bound."""
    n = draw(st.integers(0, 40))
    data = np.zeros((len(FIELDS), n))
    data[0] = draw(st.lists(st.integers(0, families - 1), min_size=n, max_size=n))  # offering = its family
    data[1] = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    data[4] = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    data[5] = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    data[8] = draw(st.lists(st.sampled_from([0.0, 0.5]), min_size=n, max_size=n))
    data[10] = data[5] + data[8]
    if n and draw(st.booleans()):
        data[10, draw(st.integers(0, n - 1))] = np.inf  # no job fits there
    bound = draw(st.sampled_from([float("inf"), 2.0, 4.0, 7.0, 100.0]))
    return GroupCosts(data), draw(st.integers(0, 30)), bound


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    groups=st.integers(0, 6),
    families=st.integers(1, 8),
    top_k=st.integers(1, 14),  # the planner's 12, or 1 and 2 in tests (`_select` has no shortlist of 0)
    per_family=st.integers(0, 4),
)
def test_selecting_the_shortlists_of_many_groups_at_once_selects_each_as_alone(
    data: st.DataObject, groups: int, families: int, top_k: int, per_family: int
) -> None:
    """`_select_many` against `_select` group by group: the same offerings in the same order (equal packed
    costs by position), the same packed costs and the same exactness, with groups of no offerings, of fewer
    than `top_k` and of few families beside each other."""
    asked = [data.draw(st.composite(lambda draw: shortlist_costs(draw, families))()) for _ in range(groups)]
    cols = cast(OfferingColumns, SimpleNamespace(family=np.arange(families, dtype=np.int64)))
    usables, demands, bounds = [a[0] for a in asked], [a[1] for a in asked], [a[2] for a in asked]
    together = _select_many(usables, demands, bounds, cols, top_k, per_family)
    assert len(together) == groups
    for (costs, packed, exact), u, d, b in zip(together, usables, demands, bounds, strict=True):
        alone = _select(u, packed_total(u, d), cols, top_k, per_family, b)
        assert np.array_equal(costs.data, alone[0].data)
        assert np.array_equal(packed, alone[1])
        assert exact == alone[2]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), groups=st.integers(1, 6), families=st.integers(1, 8), per_family=st.integers(0, 4))
def test_the_least_spend_rate_offerings_of_many_groups_at_once_are_each_groups_alone(
    data: st.DataObject, groups: int, families: int, per_family: int
) -> None:
    """`_light_many` against `_light` group by group (prices with ties, so that the packed cost and then the
    position order them)."""
    asked = [data.draw(st.composite(lambda draw: shortlist_costs(draw, families))()) for _ in range(groups)]
    asked = [a for a in asked if len(a[0])]  # `_light` of nothing is None: costing asks for none
    price = np.array(
        data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=families, max_size=families))
    )
    cols = cast(OfferingColumns, SimpleNamespace(family=np.arange(families, dtype=np.int64), price=price))
    together = _light_many([a[0] for a in asked], [a[1] for a in asked], cols, per_family)
    for (costs, packed), (u, d, _) in zip(together, asked, strict=True):
        alone = _light(u, d, cols, per_family)
        assert alone is not None
        assert np.array_equal(costs.data, alone[0].data)
        assert np.array_equal(packed, alone[1])


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    groups=st.lists(st.integers(0, 2), min_size=1, max_size=5),  # per group, how many extras
    demand=st.integers(0, 30),
)
def test_merging_the_extras_of_many_groups_at_once_merges_each_as_one_after_another(
    data: st.DataObject, groups: list[int], demand: int
) -> None:
    """`_merge_many` against `_merge_packed` of a group's extras in turn: offerings shared between the
    pieces (kept once, from the earliest) and equal packed costs (kept in the pieces' order) occur."""

    def piece(size: int) -> tuple[GroupCosts, FloatArray]:
        offerings = data.draw(st.lists(st.integers(0, 15), min_size=size, max_size=size, unique=True))
        costs = costs_of(
            offerings, data.draw(st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=size, max_size=size))
        )
        order = np.argsort(packed_total(costs, demand), kind="stable")  # each piece sorted, as selected
        costs = GroupCosts(costs.data[:, order])
        return costs, packed_total(costs, demand)

    shorts = [piece(data.draw(st.integers(0, 12))) for _ in groups]
    extras = [[piece(data.draw(st.integers(0, 4))) for _ in range(n)] for n in groups]
    for (costs, packed), short, more in zip(_merge_many(shorts, extras), shorts, extras, strict=True):
        expected = short
        for extra in more:
            expected = _merge_packed(expected, extra)
        assert np.array_equal(costs.data, expected[0].data)
        assert np.array_equal(packed, expected[1])


def test_a_group_without_usable_offerings_after_the_others_gets_an_empty_shortlist() -> None:
    """The property test's first find: the last group's row, empty, started past the groups' columns."""
    cols = cast(OfferingColumns, SimpleNamespace(family=np.arange(3, dtype=np.int64)))
    some, none = costs_of([0, 1, 2], [3.0, 1.0, 2.0]), costs_of([], [])
    (short, packed, exact), (empty, no_packed, empty_exact) = _select_many(
        [some, none], [4, 4], [float("inf"), 5.0], cols, 2, 1
    )
    assert short.offering.tolist() == [1, 2] and packed.tolist() == [1.0, 2.0] and exact
    assert len(empty) == 0 and len(no_packed) == 0 and not empty_exact


def _same(a: GroupCandidates, b: GroupCandidates) -> bool:
    return (
        a.group == b.group
        and a.demand == b.demand
        and np.array_equal(a.solver.data, b.solver.data, equal_nan=True)
        and np.array_equal(a.rejected.data, b.rejected.data, equal_nan=True)
        and np.array_equal(a.rejected_reason, b.rejected_reason)
        and a.compatible_count == b.compatible_count
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000), top_k=st.sampled_from([1, 2, 12]))
def test_groups_sharing_a_shape_get_the_shortlists_they_get_alone(seed: int, top_k: int) -> None:
    # groups of one job shape, rules and cost cap share priced windows and walks (without egress): each
    # twin, with another demand, must get the shortlist it gets when costed on its own
    inst = random_instance(seed, groups=5, offerings=300, fleet=0)  # > WINDOW: walks too
    twins = [replace(g, id=f"{g.id}:twin", jobs=3 * g.jobs + 1) for g in inst.groups]
    groups = [*inst.groups, *twins]
    setup = _prepare(groups, inst.offerings, (), inst.constraints, _Clock(None), exact=False, timings=None)
    demand = [g.jobs for g in groups]
    together = build_candidates(groups, demand, setup.cols, setup.plan_ctx, setup.compat, top_k=top_k)
    for k, g in enumerate(groups):
        alone = build_candidates([g], [demand[k]], setup.cols, setup.plan_ctx, setup.compat, top_k=top_k)
        assert _same(together[k], alone[0]), g.id


def base_of(total: np.ndarray, location: np.ndarray, prefix: int) -> _Base:
    """A shape's `_Base` with these costs without egress and the `prefix` cheapest as its prefix (what the
    window and walk read; one job per unit, one wave)."""
    if len(total) > prefix:
        first, bound = smallest_and_next(total, prefix)
    else:
        first, bound = np.argsort(total, kind="stable"), float("inf")
    ones = np.ones(len(first))
    return _Base(
        total, first, bound, total[first], ones, total[first], location[first], np.ones(0), ones, np.zeros(0)
    )


@settings(max_examples=300, deadline=None)
@given(
    totals=st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, np.inf]), min_size=1, max_size=60),
    egress_by_location=st.lists(st.sampled_from([0.0, 0.25, 1.0, 4.0]), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
    prefix=st.integers(1, 30),
    window=st.integers(1, 12),
)
def test_the_egress_window_is_the_cheapest_with_egress_over_every_offering(
    totals: list[float], egress_by_location: list[float], seed: int, prefix: int, window: int
) -> None:
    """`_egress_window` looks beyond the prefix only at offerings no dearer before egress than the prefix's
    window-th with egress: where the prefix cannot tell, the same window, ties by position, as pricing
    every offering."""
    assume(window < prefix)  # as WINDOW < PREFIX
    total = np.array(totals)
    n = len(total)
    rng = np.random.default_rng(seed)
    location = rng.integers(0, 3, n)
    cols = SimpleNamespace(location=location)
    egress = SimpleNamespace(none=False, work=2.0, usd=np.array(egress_by_location))
    base = base_of(total, location, prefix)
    with patch.object(candidates, "WINDOW", window):
        got = _egress_window(base, cast(GroupEgress, egress), cast(OfferingColumns, cols))
        want = _window(base, base.prefix_total + egress.usd[base.prefix_location] / egress.work)
        if want is None:  # something outside the prefix may be cheaper: the cheapest of every offering
            full = _full_total(base, cast(GroupEgress, egress), cast(OfferingColumns, cols))
            want = _cheapest(full, np.arange(n), window)
    assert got.tolist() == want.tolist()


@settings(max_examples=400, deadline=None)
@given(
    totals=st.lists(
        st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 8.0, 13.0, np.inf]), min_size=1, max_size=60
    ),
    egress_by_location=st.lists(st.sampled_from([0.0, 0.25, 1.0, 4.0]), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
    prefix=st.integers(1, 40),
    k=st.integers(1, 12),
    with_egress=st.booleans(),
)
def test_the_walks_batch_from_the_prefix_is_the_cheapest_allowed_over_every_offering(
    totals: list[float],
    egress_by_location: list[float],
    seed: int,
    prefix: int,
    k: int,
    with_egress: bool,
) -> None:
    """`_prefix_cheapest`: the k allowed offerings with the least cost per HS23-hour with egress, equal costs
    in catalog order, as the walk over every allowed offering takes them; no answer only where the prefix
    holds k allowed offerings or fewer, or its k-th least with egress is not below `base.bound`."""
    total = np.array(totals)
    n = len(total)
    rng = np.random.default_rng(seed)
    location = rng.integers(0, 3, n)
    allowed = rng.random(n) < 0.7
    egress = SimpleNamespace(none=False, work=2.0, usd=np.array(egress_by_location))
    base = base_of(total, location, prefix)
    first, bound = base.prefix, base.bound
    pos = np.flatnonzero(allowed[first])
    every_ok = np.flatnonzero(allowed)
    got = _prefix_cheapest(base, pos, cast(GroupEgress, egress) if with_egress else None, k)
    full = total + egress.usd[location] / egress.work if with_egress else total
    if got is None:
        assert len(pos) <= k or np.sort(full[first[pos]])[k - 1] >= bound
    else:
        assert got.tolist() == _cheapest_of(full[every_ok], every_ok, k).tolist()


def test_the_walks_batch_from_the_prefix_ranks_equal_costs_with_egress_in_catalog_order() -> None:
    # offering 0 costs 1.5 without egress; offering 1 costs 1.0, plus 0.5 of egress: equal, so catalog order
    # (the prefix, by cost without egress, holds them the other way round)
    total = np.array([1.5, 1.0, 3.0, 4.0, 5.0])
    location = np.array([0, 1, 0, 0, 0])
    base = base_of(total, location, 4)
    first = base.prefix
    egress = SimpleNamespace(none=False, work=2.0, usd=np.array([0.0, 1.0]))
    assert first.tolist() == [1, 0, 2, 3]
    got = _prefix_cheapest(base, np.arange(4), cast(GroupEgress, egress), 2)
    assert got is not None and got.tolist() == [0, 1]


@settings(max_examples=300, deadline=None)
@given(
    offerings=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.1, 0.25, 1.0, 3.0, 7.5]), st.sampled_from([1.0, 2.0, 3.0, 8.0, 64.0])
        ),
        min_size=1,
        max_size=80,
    ),
    asks=st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 7, 64, 65, 1000]), st.integers(1, 30)), min_size=1, max_size=4
    ),
)
def test_the_least_rates_are_those_of_computing_every_rate(
    offerings: list[tuple[float, float]], asks: list[tuple[int, int]]
) -> None:
    """`_RateIndex.least_rates`: the positions of the least price × ⌈jobs / slots⌉, in the order of a stable
    sort (equal rates by position); asked again for other jobs and counts (groups of one shape share the
    index)."""
    price = np.array([p for p, _ in offerings])
    slots = np.array([s for _, s in offerings])
    pos = np.arange(len(offerings)) * 3  # positions in a prefix: ascending, not contiguous
    index = _RateIndex(pos, price, slots)
    for jobs, take in asks:
        rate = price * np.ceil(jobs / slots)
        want = pos[np.argsort(rate, kind="stable")[:take]]
        assert index.least_rates(jobs, take).tolist() == want.tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=100_000), picked=st.randoms(use_true_random=False))
def test_first_windows_priced_together_are_priced_to_the_bit_as_each_alone(
    seed: int, picked: random.Random
) -> None:
    """`candidates.price_together` prices the offerings asked for a chunk's groups at once (their first windows, and
    the offerings where their data is and of the least spend rate that a window does not hold): the costs
    and price-rule reasons of `group_costs` and `priced_reasons` group by group, to the bit (egress, cost caps, budgets,
    egress caps, allocations and pacing all occur in these instances)."""
    inst = random_instance(seed, groups=6, offerings=40, fleet=0)
    setup = _prepare(
        inst.groups, inst.offerings, (), inst.constraints, _Clock(None), exact=False, timings=None
    )
    cols, ctx, compat = setup.cols, setup.plan_ctx, setup.compat
    shared = candidates._Shared({}, cols.location)
    pending = []
    for g in inst.groups:
        jpu, static = compat.static_reasons(g)
        start = candidates._start_of(g, max(g.jobs, 1), jpu, static, cols, ctx, setup.bases, shared, None)
        first = np.array(picked.sample(range(len(cols)), picked.randint(1, len(cols))), dtype=np.int64)
        pricer = candidates._GroupPricer(g, jpu, start.egress, cols, ctx, compat, start.base.risk_factor)
        pending.append(candidates._Pending(replace(start, first=first), pricer))
    asked = [candidates._ask(wait.start, candidates._first_of(wait)) for wait in pending]
    priced = candidates.price_together(asked, cols, ctx, compat).parts()
    for wait, (costs, reasons) in zip(pending, priced, strict=True):
        alone = wait.pricer.price(candidates._first_of(wait))
        assert np.array_equal(costs.data, alone.data, equal_nan=True)
        assert np.array_equal(reasons, wait.pricer.reasons(alone))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000), chunk=st.integers(1, 4), pairs=st.integers(1, 400))
# found by this test: a group with egress and a group without, of one rule set, shape and cost cap, in one
# chunk: the second took the first's window (its egress costs) as if it were shared
@example(seed=343, chunk=1, pairs=1)
def test_costing_in_chunks_of_any_size_gives_the_same_candidates(seed: int, chunk: int, pairs: int) -> None:
    """Costing prices its groups' first windows a chunk at a time (at most CHUNK groups, and past CHUNK_PAIRS
    offerings a chunk ends), a window shared by groups of one shape priced once: chunks of any size, the
    same candidates (twins of every group share windows within a chunk and across chunks)."""
    inst = random_instance(seed, groups=5, offerings=300, fleet=0)
    twins = [replace(g, id=f"{g.id}:twin", jobs=3 * g.jobs + 1) for g in inst.groups]
    groups = [*inst.groups, *twins]
    setup = _prepare(groups, inst.offerings, (), inst.constraints, _Clock(None), exact=False, timings=None)
    demand = [g.jobs for g in groups]
    whole = build_candidates(groups, demand, setup.cols, setup.plan_ctx, setup.compat)
    with patch.object(candidates, "CHUNK", chunk), patch.object(candidates, "CHUNK_PAIRS", pairs):
        chunked = build_candidates(groups, demand, setup.cols, setup.plan_ctx, setup.compat)
    for a, b in zip(whole, chunked, strict=True):
        assert _same(a, b), a.group.id


def _one_by_one(setup: _Setup, groups: list[DemandGroup], demand: list[int]) -> list[GroupCandidates]:
    """`build_candidates` group by group with nothing priced together: each group's first window, and the
    offerings where its data is and of the least spend rate, priced by its own pricer."""
    cols, ctx, compat = setup.cols, setup.plan_ctx, setup.compat
    shared = candidates._Shared(
        {name: np.flatnonzero(cols.location == k) for k, name in enumerate(cols.locations)}, cols.location
    )
    bases = candidates.BaseCosts(cols, ctx)
    lim = compat.limits
    out = []
    for g, jobs in zip(groups, demand, strict=True):
        jpu, static = compat.static_reasons(g)
        start = candidates._start_of(g, jobs, jpu, static, cols, ctx, bases, shared, candidates.TOP_K)
        first = candidates._first(start, cols, shared, candidates.TOP_K)
        pricer = candidates._GroupPricer(g, jpu, start.egress, cols, ctx, compat, start.base.risk_factor)
        priced = pricer.price(first)
        window = candidates._price_first(
            first, pricer, priced, pricer.reasons(priced), static, start.base, cols, candidates.EXPLAIN_K
        )
        head = candidates._head(
            start,
            window,
            cols,
            ctx,
            compat,
            shared,
            candidates.TOP_K,
            candidates.PER_FAMILY,
            lambda exp: bool(
                np.isfinite(lim.facility_spend) or np.isfinite(lim.exp_spend[lim.exp_index[exp]])
            ),
        )
        asked = []
        for idx in (head.home, head.light):
            costs = None if idx is None else pricer.price(idx)
            asked.append(None if costs is None else costs.take(pricer.reasons(costs) == 0))
        out.append(candidates._finished(head, asked[0], asked[1], cols, candidates.PER_FAMILY))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_costing_a_chunk_together_gives_each_group_the_candidates_it_gets_priced_alone(seed: int) -> None:
    """Costing prices a chunk's first windows together, then the offerings where each group's data is and of
    the least spend rate that its window does not hold: each group gets the candidates it gets with all
    of those priced by its own pricer, one group after another (rate caps and egress occur here)."""
    inst = random_instance(seed, groups=6, offerings=300, fleet=0)
    twins = [replace(g, id=f"{g.id}:twin", jobs=3 * g.jobs + 1) for g in inst.groups]
    groups = [*inst.groups, *twins]
    setup = _prepare(groups, inst.offerings, (), inst.constraints, _Clock(None), exact=False, timings=None)
    demand = [max(g.jobs, 1) for g in groups]
    together = build_candidates(groups, demand, setup.cols, setup.plan_ctx, setup.compat)
    for a, b in zip(together, _one_by_one(setup, groups, demand), strict=True):
        assert _same(a, b), a.group.id
        assert np.array_equal(a.packed, b.packed, equal_nan=True)

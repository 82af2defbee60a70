"""How long a group's shortlist is: TOP_K, shorter where a round has so many groups that the shortlists
would exceed SHORTLIST_PAIRS pairs (the LP over them is what takes the time), never below MIN_TOP_K."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.planner import _Clock, _prepare, candidates
from provisioner.planner.candidates import MIN_TOP_K, SHORTLIST_PAIRS, TOP_K, build_candidates, shortlist_size
from tests.planner.instances import random_instance


@given(st.integers(0, 1_000_000))
def test_a_rounds_shortlists_stay_within_the_pair_budget_down_to_the_least_size(groups: int) -> None:
    k = shortlist_size(groups)
    assert MIN_TOP_K <= k <= TOP_K
    assert k * groups <= SHORTLIST_PAIRS or k == MIN_TOP_K
    assert k == TOP_K or (k + 1) * groups > SHORTLIST_PAIRS  # no shorter than the budget asks
    assert shortlist_size(groups + 1) <= k  # more groups never lengthen a group's shortlist


def test_few_groups_keep_the_full_shortlist() -> None:
    assert shortlist_size(720) == TOP_K  # the 1M-job instance of benchmarks/planner_scale.py
    assert shortlist_size(5_000) == MIN_TOP_K  # its 5,000-group instance


def test_a_round_of_many_groups_shortlists_as_many_as_the_size_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The planner costs its groups with the size their count gives (the pair budget lowered so that its
    groups are many): the shortlists are those of that size, not TOP_K's."""
    inst = random_instance(3, groups=12, offerings=40, fleet=0)
    pending = sum(1 for g in inst.groups if g.jobs > 0)  # no fleet: the groups costed
    monkeypatch.setattr(candidates, "SHORTLIST_PAIRS", pending * MIN_TOP_K)
    setup = _prepare(
        inst.groups, inst.offerings, inst.fleet, inst.constraints, _Clock(None), exact=False, timings=None
    )
    active = [c.group for c in setup.candidates]

    def shortlists(top_k: int) -> list[list[int]]:
        found = build_candidates(
            active,
            [c.demand for c in setup.candidates],
            setup.cols,
            setup.plan_ctx,
            setup.compat,
            top_k=top_k,
        )
        return [c.solver.offering.tolist() for c in found]

    got = [c.solver.offering.tolist() for c in setup.candidates]
    assert len(active) == pending
    assert got == shortlists(MIN_TOP_K)
    assert got != shortlists(TOP_K)  # the instance has groups with more than MIN_TOP_K to choose from

"""Marginal egress pricing: each GB at its own tier's rate, given what this period already used."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import find_route, marginal_egress_cost, marginal_egress_cost_array
from provisioner.domain import EgressRoute, EgressTier

# AWS internet egress from US East (shared/data/egress/skypilot_egress_tiers.csv), as marginal tiers
AWS = (
    EgressTier(1, Decimal("0")),
    EgressTier(10240, Decimal("0.09")),
    EgressTier(51200, Decimal("0.085")),
    EgressTier(153600, Decimal("0.07")),
    EgressTier(None, Decimal("0.05")),
)

volumes = st.decimals(min_value=0, max_value=400_000, places=3, allow_nan=False, allow_infinity=False)


def test_a_transfer_across_a_tier_edge_is_priced_in_both_tiers() -> None:
    # 10,000 GB used; 1,000 more: 240 GB at 0.09 and 760 GB at 0.085 (not all 1,000 at one rate)
    assert marginal_egress_cost(1000, 10000, AWS) == Decimal("240") * Decimal("0.09") + 760 * Decimal("0.085")


def test_the_first_gigabytes_of_a_period_use_the_free_tier() -> None:
    assert marginal_egress_cost(1, 0, AWS) == 0
    assert marginal_egress_cost(2, 0, AWS) == Decimal("0.09")


def test_volume_beyond_the_last_edge_costs_the_open_tier_rate() -> None:
    assert marginal_egress_cost(100, 200_000, AWS) == Decimal("5.00")


def test_a_last_tier_with_an_edge_still_prices_everything_beyond_it() -> None:
    bounded = (EgressTier(10, Decimal("1")), EgressTier(20, Decimal("0.5")))
    assert marginal_egress_cost(30, 0, bounded) == Decimal("10") + 20 * Decimal("0.5")


def test_no_tiers_or_no_volume_costs_nothing() -> None:
    assert marginal_egress_cost(100, 0, ()) == 0
    assert marginal_egress_cost(0, 5000, AWS) == 0


@given(a=volumes, b=volumes, used=volumes)
@settings(max_examples=300, deadline=None)
def test_cost_is_additive_over_consecutive_transfers(a: Decimal, b: Decimal, used: Decimal) -> None:
    together = marginal_egress_cost(a + b, used, AWS)
    assert marginal_egress_cost(a, used, AWS) + marginal_egress_cost(b, used + a, AWS) == together


@given(a=volumes, b=volumes, used=volumes)
@settings(max_examples=300, deadline=None)
def test_cost_is_monotone_in_volume_and_never_dearer_later_in_the_period(
    a: Decimal, b: Decimal, used: Decimal
) -> None:
    small, large = sorted((a, b))
    assert marginal_egress_cost(small, used, AWS) <= marginal_egress_cost(large, used, AWS)
    # past the free first GB AWS rates only fall, so the same transfer later in the period is never dearer
    falling = AWS[1:]
    assert marginal_egress_cost(a, used + b, falling) <= marginal_egress_cost(a, used, falling)


@given(gb=st.integers(0, 300_000), used=st.integers(0, 300_000))
@settings(max_examples=200, deadline=None)
def test_float_additivity_holds_for_float_inputs(gb: int, used: int) -> None:
    half = gb / 2
    assert marginal_egress_cost(half, used, AWS) + marginal_egress_cost(half, used + half, AWS) == (
        marginal_egress_cost(float(gb), used, AWS)
    )


def test_vectorised_variant_matches_the_exact_one() -> None:
    rng = np.random.default_rng(7)
    gb = rng.uniform(0, 200_000, 500)
    used = rng.uniform(0, 200_000, 500)
    fast = marginal_egress_cost_array(gb, used, AWS)
    exact = np.array(
        [float(marginal_egress_cost(float(g), float(u), AWS)) for g, u in zip(gb, used, strict=True)]
    )
    np.testing.assert_allclose(fast, exact, rtol=1e-12, atol=1e-9)
    # broadcasting: one period usage against many candidate volumes
    assert marginal_egress_cost_array(np.array([0.0, 1.0, 2.0]), 0.0, AWS).tolist() == [0.0, 0.0, 0.09]


def test_exact_destination_wins_over_the_wildcard_route() -> None:
    anywhere = EgressRoute("aws:us-east-1", "*", AWS)
    inter_region = EgressRoute("aws:us-east-1", "aws:us-west-2", (EgressTier(None, Decimal("0.02")),))
    routes = (anywhere, inter_region)
    assert find_route("aws:us-east-1", "aws:us-west-2", routes) is inter_region
    assert find_route("aws:us-east-1", "site:desy", routes) is anywhere
    assert find_route("gce:us-central1", "site:desy", routes) is None

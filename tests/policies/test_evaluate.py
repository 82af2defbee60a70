"""Evaluating the policy at a moment: budgets net of spend, limits, quotas, routes and allocation values."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from policies import (
    BudgetPeriod,
    evaluate,
    load_policy,
    paced_offerings,
    pacing_status,
    parse_policy,
    period_bounds,
    site_offerings,
)
from provisioner.domain import Arch, EgressRoute, EgressTier, Market, Offering

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.toml"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PERLMUTTER = "perlmutter:regular:cpu-milan:allocation"
POLARIS = "polaris:prod:a100x4:allocation"
MAXWELL = "maxwell:allcpu:epyc7402:backfill"


def cloud(instance: str, price: str, cores: int, hs23_per_core: float, **extra: object) -> Offering:
    fields: dict[str, object] = {
        "id": f"aws:us-east-1:{instance}:on_demand",
        "backend": "aws",
        "provider": "aws",
        "region": "us-east-1",
        "instance_type": instance,
        "family": f"aws:{instance.split('.')[0]}",
        "market": Market.ON_DEMAND,
        "cores": cores,
        "memory_gb": 4.0 * cores,
        "arch": Arch.X86_64,
        "price_per_hour": Decimal(price),
        "hs23_per_core": hs23_per_core,
    }
    fields.update(extra)
    return Offering(**fields)  # type: ignore[arg-type]


def test_budget_left_is_budget_minus_spend_floored_at_zero() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())
    spend = {"atlas": Decimal("12000.50"), "lsst": Decimal("31000")}
    limits = evaluate(
        policy, now=NOW, spend_so_far=spend, egress_used_gb={}, offerings_for_pricing=None
    ).experiments
    assert limits["atlas"].budget_remaining == Decimal("37999.50")
    assert limits["lsst"].budget_remaining == 0  # overspent: 0, never negative


def test_the_tightest_of_several_period_budgets_applies() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())  # lsst: 30,000 monthly and 10,000 weekly
    spend = {"lsst": Decimal("12000"), "lsst/weekly": Decimal("9500")}
    limits = evaluate(policy, now=NOW, spend_so_far=spend, egress_used_gb={}, offerings_for_pricing=None)
    assert limits.experiments["lsst"].budget_remaining == Decimal("500")
    no_spend = evaluate(policy, now=NOW, spend_so_far={}, egress_used_gb={}, offerings_for_pricing=None)
    assert no_spend.experiments["lsst"].budget_remaining == Decimal("10000")


def test_experiment_limits_follow_the_file() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())
    used = {"atlas": 1500.0, "aws:us-east-1": 7000.0}
    constraints = evaluate(policy, now=NOW, spend_so_far={}, egress_used_gb=used, offerings_for_pricing=None)
    atlas, lsst = constraints.experiments["atlas"], constraints.experiments["lsst"]
    assert atlas.allowed_archs == frozenset({Arch.X86_64}) and atlas.max_gpus == 0
    assert atlas.egress_cap_gb == 60000 - 1500 and lsst.egress_cap_gb == 20000
    assert atlas.spend_rate_cap_per_hour == Decimal("120") and atlas.share == 2.0
    assert lsst.allowed_gpu_models == frozenset({"A100", "A100-80GB", "H100", "L4"}) and lsst.max_gpus == 64
    assert Market.SPOT in (lsst.allowed_markets or ())
    assert constraints.spend_rate_cap_per_hour == Decimal("180")
    assert constraints.family_quota_cores["aws:p5"] == 0
    assert constraints.egress_used_gb == {"aws:us-east-1": 7000.0}  # experiments' GB are not locations
    assert constraints.horizon_hours == 24 and constraints.now == NOW


def test_policy_routes_come_before_catalog_defaults() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())
    default = EgressRoute("aws:us-east-1", "*", (EgressTier(None, Decimal("0.09")),))
    constraints = evaluate(
        policy,
        now=NOW,
        spend_so_far={},
        egress_used_gb={},
        offerings_for_pricing=None,
        default_routes=[default],
    )
    assert constraints.egress_routes[-1] is default
    first = constraints.egress_routes[0]
    assert (first.source, first.destination) == ("aws:us-east-1", "*")
    assert [t.usd_per_gb for t in first.tiers] == [Decimal(x) for x in ("0.09", "0.085", "0.07", "0.05")]


def test_site_offerings_are_zero_priced_and_carry_their_allocation() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())
    offerings = {o.id: o for o in site_offerings(policy)}
    assert set(offerings) == {PERLMUTTER, POLARIS, MAXWELL}
    perlmutter, maxwell = offerings[PERLMUTTER], offerings[MAXWELL]
    assert perlmutter.market is Market.ALLOCATION and perlmutter.price_per_hour == 0
    assert perlmutter.allocation is not None and perlmutter.allocation.node_hours_left == 5000
    assert perlmutter.capacity_units == 64 and perlmutter.max_walltime_hours == 48
    assert perlmutter.location == "slurm:nersc" and perlmutter.hs23 == 128 * 24.8
    assert maxwell.market is Market.BACKFILL and maxwell.allocation is None
    assert maxwell.interruption_rate_per_hour == 0.08 and maxwell.family == "slurm:maxwell"
    assert offerings[POLARIS].gpu_model == "A100" and offerings[POLARIS].gpu_count == 4


def test_expired_allocation_is_neither_offered_nor_valued() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())  # polaris ends 2026-11-30
    later = datetime(2026, 12, 1, tzinfo=UTC)
    assert POLARIS not in {o.id for o in site_offerings(policy, now=later)}
    constraints = evaluate(policy, now=later, spend_so_far={}, egress_used_gb={}, offerings_for_pricing=None)
    assert POLARIS not in constraints.allocation_hour_value
    assert PERLMUTTER in constraints.allocation_hour_value  # still running until 2026-12-03


def test_allocation_ahead_of_pace_is_valued_against_the_cheapest_cloud_and_paced() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())
    # perlmutter at NOW: 89.8% elapsed, target 53,871 node-h; report 58,000 used (6.9% ahead)
    base = {o.id: o for o in site_offerings(policy)}[PERLMUTTER]
    assert base.allocation is not None
    fresher = dataclasses.replace(
        base, allocation=dataclasses.replace(base.allocation, node_hours_used=58000)
    )
    c7a = cloud("c7a.48xlarge", "9.85344", 192, 15.0)  # $/HS23-h = 9.85344 / 2880
    dearer = cloud("m7i.48xlarge", "9.6768", 192, 12.0)
    pricing = [fresher, c7a, dearer]
    constraints = evaluate(policy, now=NOW, spend_so_far={}, egress_used_gb={}, offerings_for_pricing=pricing)
    value = constraints.allocation_hour_value[PERLMUTTER]
    reference = Decimal("9.85344") / Decimal(2880) * Decimal(str(128 * 24.8))
    assert reference / 2 < value < reference
    assert PERLMUTTER in paced_offerings(policy, now=NOW, offerings_for_pricing=pricing)
    lagging = dataclasses.replace(
        base, allocation=dataclasses.replace(base.allocation, node_hours_used=49500)
    )
    behind = evaluate(
        policy, now=NOW, spend_so_far={}, egress_used_gb={}, offerings_for_pricing=[lagging, c7a]
    )
    assert behind.allocation_hour_value[PERLMUTTER] == 0  # 49,500 used: behind, hours would expire


def test_gpu_allocation_reference_is_priced_per_gpu_of_the_same_model() -> None:
    text = (
        EXAMPLE.read_text()
        .replace('pacing = "asap"', 'pacing = "even"')
        .replace("node_hours_used = 1640", "node_hours_used = 1990")
    )
    policy = parse_policy(text, "gpu.toml", today=NOW.date())
    p4d = cloud("p4d.24xlarge", "32.7726", 96, 10.0, gpu_model="A100", gpu_count=8)
    l4 = cloud("g6.xlarge", "0.8048", 4, 10.0, gpu_model="L4", gpu_count=1)
    constraints = evaluate(
        policy, now=NOW, spend_so_far={}, egress_used_gb={}, offerings_for_pricing=[p4d, l4]
    )
    reference = Decimal("32.7726") / 8 * 4  # four A100s at the p4d per-GPU price, not the L4's
    info = {o.id: o for o in site_offerings(policy)}[POLARIS].allocation
    assert info is not None
    expected = pacing_status(info, NOW, reference).value_per_node_hour
    assert 0 < constraints.allocation_hour_value[POLARIS] == expected < reference


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        (BudgetPeriod.MONTHLY, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        (BudgetPeriod.WEEKLY, datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)),
        (BudgetPeriod.DAILY, datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 24, tzinfo=UTC)),
    ],
)
def test_period_bounds_are_utc_calendar_periods(period: BudgetPeriod, start: datetime, end: datetime) -> None:
    assert period_bounds(period, NOW) == (start, end)


def test_period_bounds_roll_over_the_year_and_convert_to_utc() -> None:
    assert period_bounds("monthly", datetime(2026, 12, 31, 23, tzinfo=UTC))[1] == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    from datetime import timezone

    tokyo = datetime(2026, 12, 1, 5, 0, tzinfo=timezone(timedelta(hours=9)))  # still 30 Nov in UTC
    assert period_bounds("monthly", tokyo)[0] == datetime(2026, 11, 1, tzinfo=UTC)


def test_naive_now_is_refused() -> None:
    policy = load_policy(EXAMPLE, today=NOW.date())
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(
            policy, now=datetime(2026, 11, 23), spend_so_far={}, egress_used_gb={}, offerings_for_pricing=None
        )

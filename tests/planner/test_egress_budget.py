"""Budget rows never under-estimate egress money when several groups leave the same source."""

from __future__ import annotations

from decimal import Decimal

from benchmarks.plan_check import Usage, check_plan
from benchmarks.reference_rules import Catalog
from provisioner.domain import EgressTier, ExperimentLimits, PlanningConstraints
from provisioner.planner import plan
from tests.planner.factories import NOW, group, offering

FREE_FIRST_GB = (EgressTier(1.0, Decimal("0")), EgressTier(None, Decimal("0.09")))


def test_groups_sharing_a_free_first_tier_are_budgeted_at_the_rate_they_will_pay() -> None:
    # data in gce:europe-west4 (first GB free, then $0.09/GB); the only offering is in AWS
    away = offering("c.large", cores=2, memory_gb=8.0, price="0.10", egress_tiers=FREE_FIRST_GB)
    home = offering("n.small", provider="gce", region="europe-west4", price="9.0", egress_tiers=FREE_FIRST_GB)
    groups = [
        group(
            f"g{k}",
            jobs=1,
            cores_per_job=2,
            memory_gb_per_job=4.0,
            walltime_hours=1.0,
            data_location="gce:europe-west4",
            input_gb_per_job=1.0,
        )
        for k in range(4)
    ]
    # compute is $0.10 + start-up per job; every GB after the first costs $0.09: four jobs need ~$0.67
    budget = Decimal("0.50")
    constraints = PlanningConstraints(
        experiments={"atlas": ExperimentLimits("atlas", budget_remaining=budget)}, now=NOW
    )
    offerings = [away, home]
    cat = Catalog(offerings, constraints)
    for method in ("milp", "lp"):
        p = plan(groups, offerings, (), constraints, method=method)
        check = check_plan(
            groups,
            cat,
            constraints,
            [Usage(i.group_id, i.offering_id, i.units, i.jobs, float(i.cost)) for i in p.items],
        )
        assert check.violations == []
        assert p.total_cost <= budget
        assert check.money <= float(budget) + 1e-9


def test_the_floor_rate_is_the_cheapest_tier_a_further_gb_can_reach() -> None:
    """`lp_bound` charges egress at this floor: no GB moved this period costs less, whoever else moves
    data from the source; tiers already used up no longer count."""
    from provisioner.planner.cost import EgressPricer

    tiers = (
        EgressTier(100.0, Decimal("0")),  # the free first 100 GB
        EgressTier(10_240.0, Decimal("0.09")),
        EgressTier(51_200.0, Decimal("0.085")),
        EgressTier(None, Decimal("0.07")),
    )
    fresh = EgressPricer((), {}, {})
    assert fresh.floor_rate(tiers, "aws:us-east-1") == 0.0  # the free tier is still there
    past_free = EgressPricer((), {}, {"aws:us-east-1": 500.0})
    assert past_free.floor_rate(tiers, "aws:us-east-1") == 0.07
    assert past_free.top_rate(tiers, "aws:us-east-1") == 0.09
    assert fresh.floor_rate((), "aws:us-east-1") == 0.0

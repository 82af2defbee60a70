"""Random planning instances (offerings, groups, fleet, constraints) for property tests and benchmarks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from provisioner.domain import (
    LIVE_STATES,
    AllocationInfo,
    Arch,
    DemandGroup,
    EgressRoute,
    EgressTier,
    ExperimentLimits,
    FleetUnit,
    Market,
    Offering,
    PlanningConstraints,
    ResourceState,
)
from tests.planner.factories import NOW

LOCATIONS = ("aws:us-east-1", "aws:eu-west-1", "gce:europe-west4", "onprem:cern")
EXPERIMENTS = ("atlas", "cms", "lhcb")
TIERS = (EgressTier(50.0, Decimal("0.09")), EgressTier(None, Decimal("0.05")))


@dataclass(frozen=True, slots=True)
class Instance:
    groups: list[DemandGroup]
    offerings: list[Offering]
    fleet: list[FleetUnit]
    constraints: PlanningConstraints


def random_offering(rng: random.Random, k: int) -> Offering:
    market = rng.choice([Market.ON_DEMAND, Market.ON_DEMAND, Market.SPOT, Market.ALLOCATION, Market.BACKFILL])
    cores = rng.choice([2, 4, 8, 16, 32, 64])
    gpus = rng.choice([0, 0, 0, 1, 4])
    provider, region = rng.choice(LOCATIONS[:3]).split(":")
    allocation = None
    price = Decimal(str(round(cores * rng.uniform(0.02, 0.06) + gpus * rng.uniform(0.5, 2.0), 4)))
    if market in (Market.ALLOCATION, Market.BACKFILL):
        provider, region, price = "slurm", f"hpc{k % 2}", Decimal(0)
    if market is Market.ALLOCATION:
        allocation = AllocationInfo(
            name=f"alloc{k}",
            account="hep",
            partition="cpu",
            qos=None,
            node_hours_granted=1000.0,
            node_hours_used=1000.0 - rng.choice([0.0, 20.0, 200.0, 5000.0]),
            starts=NOW - timedelta(days=10),
            ends=NOW + timedelta(days=rng.choice([0.5, 3, 60])),
        )
    return Offering(
        id=f"{provider}:{region}:type{k}:{market.value}",
        backend=provider,
        provider=provider,
        region=region,
        instance_type=f"type{k}",
        family=f"{provider}:fam{k % 3}",
        market=market,
        cores=cores,
        memory_gb=cores * rng.choice([2.0, 4.0, 8.0]),
        arch=rng.choice([Arch.X86_64, Arch.X86_64, Arch.ARM64]),
        price_per_hour=price,
        hs23_per_core=rng.uniform(10.0, 25.0),
        gpu_model=rng.choice(["A100", "T4"]) if gpus else None,
        gpu_count=gpus,
        interruption_rate_per_hour=rng.choice([0.0, 0.02, 0.2])
        if market in (Market.SPOT, Market.BACKFILL)
        else 0.0,
        startup_seconds=rng.choice([60, 300]),
        max_walltime_hours=rng.choice([None, 12.0, 48.0]),
        capacity_units=rng.choice([None, 2, 10, 50]),
        egress_tiers=TIERS if provider in ("aws", "gce") else (),
        allocation=allocation,
    )


def random_group(rng: random.Random, k: int) -> DemandGroup:
    gpus = rng.choice([0, 0, 0, 1])
    return DemandGroup(
        id=f"g{k}",
        experiment=rng.choice(EXPERIMENTS),
        jobs=rng.choice([0, 1, 3, 10, 50, 300]),
        cores_per_job=rng.choice([1, 1, 2, 4, 8]),
        memory_gb_per_job=rng.choice([1.0, 2.0, 4.0, 16.0]),
        walltime_hours=rng.choice([0.5, 2.0, 6.0, 20.0]),
        archs=rng.choice(
            [frozenset({Arch.X86_64}), frozenset({Arch.X86_64, Arch.ARM64}), frozenset({Arch.ARM64})]
        ),
        gpus_per_job=gpus,
        gpu_model=rng.choice([None, "A100"]) if gpus else None,
        input_gb_per_job=rng.choice([0.0, 1.0, 5.0]),
        output_gb_per_job=rng.choice([0.0, 0.5]),
        data_location=rng.choice([None, *LOCATIONS]),
        preemptible=rng.random() < 0.4,
        priority=rng.choice([0, 0, 10]),
        max_cost_per_hs23_hour=rng.choice([None, None, Decimal("0.003")]),
    )


def random_limits(rng: random.Random, name: str) -> ExperimentLimits:
    return ExperimentLimits(
        experiment=name,
        budget_remaining=rng.choice([None, Decimal("0"), Decimal("7.5"), Decimal("60"), Decimal("500")]),
        spend_rate_cap_per_hour=rng.choice([None, Decimal("3"), Decimal("20")]),
        allowed_markets=rng.choice([None, frozenset({Market.ON_DEMAND, Market.ALLOCATION, Market.BACKFILL})]),
        allowed_archs=rng.choice([None, frozenset({Arch.X86_64})]),
        max_gpus=rng.choice([None, 2]),
        egress_cap_gb=rng.choice([None, 20.0, 500.0]),
        share=rng.choice([1.0, 2.0]),
    )


def random_instance(seed: int, groups: int = 4, offerings: int = 8, fleet: int = 3) -> Instance:
    rng = random.Random(seed)
    offs = [random_offering(rng, k) for k in range(offerings)]
    grps = [random_group(rng, k) for k in range(groups)]
    units = []
    for k in range(rng.randint(0, fleet)):
        o = rng.choice(offs)
        g = rng.choice([*grps, None])
        units.append(
            FleetUnit(
                resource_id=f"r{k}",
                offering_id=o.id,
                group_id=g.id if g else "gone",
                experiment=g.experiment if g else rng.choice(EXPERIMENTS),
                state=rng.choice([*LIVE_STATES, ResourceState.RUNNING]),
                busy=rng.random() < 0.6,
                idle_hours=rng.choice([0.0, 1.0]),
                walltime_left_hours=rng.choice([None, 0.0, 8.0]) if o.allocation else None,
                price_per_hour=o.price_per_hour,
            )
        )
    families = sorted({o.family for o in offs})
    constraints = PlanningConstraints(
        experiments={e: random_limits(rng, e) for e in EXPERIMENTS if rng.random() < 0.8},
        spend_rate_cap_per_hour=rng.choice([None, Decimal("4"), Decimal("40")]),
        family_quota_cores={f: rng.choice([0, 16, 64, 512]) for f in families if rng.random() < 0.5},
        egress_routes=(EgressRoute("onprem:cern", "*", TIERS),),
        egress_used_gb={"onprem:cern": rng.choice([0.0, 40.0])},
        allocation_hour_value={o.id: Decimal(rng.choice(["0", "0.5", "3"])) for o in offs if o.allocation},
        unavailable_offerings=frozenset(o.id for o in offs if rng.random() < 0.1),
        horizon_hours=rng.choice([6.0, 24.0]),
        now=NOW,
    )
    return Instance(grps, offs, units, constraints)

"""Small builders of offerings, groups and constraints for the planner tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from provisioner.domain import AllocationInfo, Arch, DemandGroup, Market, Offering

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def offering(
    name: str,
    *,
    cores: int = 16,
    memory_gb: float = 64.0,
    price: str = "0.80",
    market: Market = Market.ON_DEMAND,
    arch: Arch = Arch.X86_64,
    hs23_per_core: float = 15.0,
    provider: str = "aws",
    region: str = "us-east-1",
    family: str | None = None,
    **extra: Any,
) -> Offering:
    return Offering(
        id=f"{provider}:{region}:{name}:{market.value}",
        backend=provider,
        provider=provider,
        region=region,
        instance_type=name,
        family=family or f"{provider}:{name.split('.')[0]}",
        market=market,
        cores=cores,
        memory_gb=memory_gb,
        arch=arch,
        price_per_hour=Decimal(price),
        hs23_per_core=hs23_per_core,
        **extra,
    )


def allocation_offering(
    name: str = "maxwell", *, node_hours_left: float = 1000.0, ends_in_days: float = 30.0, **extra: Any
) -> Offering:
    alloc = AllocationInfo(
        name=name,
        account="hep",
        partition="all",
        qos=None,
        node_hours_granted=node_hours_left,
        node_hours_used=0.0,
        starts=NOW - timedelta(days=30),
        ends=NOW + timedelta(days=ends_in_days),
    )
    extra.setdefault("cores", 64)
    extra.setdefault("memory_gb", 256.0)
    return offering(
        name,
        price="0",
        market=Market.ALLOCATION,
        provider="slurm",
        region="desy",
        family=f"slurm:{name}",
        allocation=alloc,
        **extra,
    )


def group(name: str = "g", *, experiment: str = "atlas", jobs: int = 10, **extra: Any) -> DemandGroup:
    extra.setdefault("cores_per_job", 1)
    extra.setdefault("memory_gb_per_job", 2.0)
    extra.setdefault("walltime_hours", 4.0)
    return DemandGroup(id=name, experiment=experiment, jobs=jobs, **extra)

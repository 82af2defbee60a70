"""The facility's own capacity from the policy file — HPC allocations and backfill pools — as `Offering`s."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from policies.pacing import allocation_available
from policies.schema import AllocationPolicy, BackfillPool, Policy
from provisioner.domain import AllocationInfo, Market, Offering


def offering_id_for(backend: str, partition: str, node_name: str, market: str) -> str:
    """Stable id "<backend>:<partition>:<node shape>:<market>" (partition stands for the zone)."""
    return f"{backend}:{partition}:{node_name}:{market}"


def allocation_info(name: str, allocation: AllocationPolicy) -> AllocationInfo:
    return AllocationInfo(
        name=name,
        account=allocation.account,
        partition=allocation.partition,
        qos=allocation.qos,
        node_hours_granted=allocation.node_hours_granted,
        node_hours_used=allocation.node_hours_used,
        starts=allocation.starts,
        ends=allocation.ends,
        pacing=allocation.pacing,
    )


def _offering(name: str, entry: AllocationPolicy | BackfillPool) -> Offering:
    node = entry.node
    is_allocation = isinstance(entry, AllocationPolicy)
    market = Market.ALLOCATION if is_allocation else Market.BACKFILL
    return Offering(
        id=offering_id_for(entry.backend, entry.partition, node.name, market.value),
        backend=entry.backend,
        provider="slurm" if is_allocation else "backfill",
        region=entry.site or entry.backend,
        zone=entry.partition,
        instance_type=node.name,
        family=f"slurm:{entry.backend}",  # one quota family per machine, whether allocated or backfilled
        market=market,
        cores=node.cores,
        memory_gb=node.memory_gb,
        arch=node.arch,
        price_per_hour=Decimal(0),
        hs23_per_core=node.hs23_per_core,
        gpu_model=node.gpu_model,
        gpu_count=node.gpu_count,
        interruption_rate_per_hour=entry.eviction_rate_per_hour if isinstance(entry, BackfillPool) else 0.0,
        startup_seconds=entry.startup_seconds,
        max_walltime_hours=entry.max_walltime_hours,
        capacity_units=entry.max_nodes,
        allocation=allocation_info(name, entry) if isinstance(entry, AllocationPolicy) else None,
        benchmark_assumption=f"hs23_per_core {node.hs23_per_core:g} as stated in the policy file ({name})",
    )


def site_offerings(policy: Policy, *, now: datetime | None = None) -> list[Offering]:
    """One offering per allocation and backfill pool; with `now`, expired, not yet started or
    exhausted allocations are left out (they are not offered)."""
    offerings = []
    for name, allocation in policy.allocations.items():
        offering = _offering(name, allocation)
        info = offering.allocation
        if now is not None and info is not None and not allocation_available(info, now):
            continue
        offerings.append(offering)
    offerings.extend(_offering(name, pool) for name, pool in policy.backfill.items())
    return offerings


def dataset_location(policy: Policy, dataset: str) -> str | None:
    """Where `dataset` is ("<provider>:<region>"), as the facility declares it."""
    return policy.facility.data_locations.get(dataset)

"""Small stand-ins for the engine's collaborators in tests: offerings, a source, grouping, a greedy planner."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from provisioner.domain import (
    Arch,
    CostBreakdown,
    DemandGroup,
    FleetUnit,
    GroupExplanation,
    Market,
    Offering,
    PendingJob,
    Plan,
    PlanItem,
    PlanningConstraints,
    Rejection,
    RejectReason,
    ResourceState,
)


def offering(
    name: str,
    *,
    backend: str = "cloud",
    market: Market = Market.ON_DEMAND,
    price: str = "0.40",
    cores: int = 8,
    startup_seconds: int = 60,
    interruption_rate: float = 0.0,
    max_walltime_hours: float | None = None,
    capacity_units: int | None = None,
) -> Offering:
    return Offering(
        id=f"{backend}:r1:{name}:{market}",
        backend=backend,
        provider="simulated",
        region="r1",
        instance_type=name,
        family=f"{backend}:{name}",
        market=market,
        cores=cores,
        memory_gb=cores * 4.0,
        arch=Arch.X86_64,
        price_per_hour=Decimal(price),
        hs23_per_core=10.0,
        startup_seconds=startup_seconds,
        interruption_rate_per_hour=interruption_rate,
        max_walltime_hours=max_walltime_hours,
        capacity_units=capacity_units,
    )


def jobs(
    experiment: str, n: int, *, cores: int = 8, walltime: float = 2.0, preemptible: bool = False
) -> list[PendingJob]:
    return [
        PendingJob(
            job_id=f"{experiment}-{i}",
            experiment=experiment,
            cores=cores,
            memory_gb=cores * 2.0,
            walltime_hours=walltime,
            preemptible=preemptible,
        )
        for i in range(n)
    ]


@dataclass
class StaticSource:
    name: str = "static"
    jobs: list[PendingJob] = field(default_factory=list)
    calls: int = 0

    async def pending(self) -> list[PendingJob]:
        self.calls += 1
        return list(self.jobs)


def group_jobs(pending: Sequence[PendingJob]) -> list[DemandGroup]:
    """Group by experiment and shape; the id is stable across cycles."""
    buckets: dict[tuple[str, int, float, bool], list[PendingJob]] = {}
    for j in pending:
        buckets.setdefault((j.experiment, j.cores, j.walltime_hours, j.preemptible), []).append(j)
    return [
        DemandGroup(
            id=f"{exp}-{cores}c-{wall}h{'-p' if pre else ''}",
            experiment=exp,
            jobs=len(js),
            cores_per_job=cores,
            memory_gb_per_job=js[0].memory_gb,
            walltime_hours=wall,
            preemptible=pre,
            source="static",
        )
        for (exp, cores, wall, pre), js in sorted(buckets.items())
    ]


def greedy_plan(
    groups: Sequence[DemandGroup],
    offerings: Sequence[Offering],
    fleet: Sequence[FleetUnit],
    constraints: PlanningConstraints,
) -> Plan:
    """Cheapest usable offering per group, one job per `cores` slice, minus units already serving it."""
    items: list[PlanItem] = []
    explanations: list[GroupExplanation] = []
    serving: dict[str | None, int] = {}
    for u in fleet:
        if u.state != ResourceState.DRAINING:
            serving[u.group_id] = serving.get(u.group_id, 0) + 1
    for g in groups:
        usable: list[Offering] = []
        rejected: list[Rejection] = []
        for o in sorted(offerings, key=lambda o: (o.price_per_hour, o.id)):
            if o.id in constraints.unavailable_offerings:
                rejected.append(Rejection(o.id, RejectReason.UNAVAILABLE))
            elif o.market == Market.BACKFILL and not g.preemptible:
                rejected.append(Rejection(o.id, RejectReason.NOT_PREEMPTIBLE))
            elif o.cores < g.cores_per_job:
                rejected.append(Rejection(o.id, RejectReason.CORES))
            else:
                usable.append(o)
        if not usable:
            explanations.append(
                GroupExplanation(g.id, g.experiment, (), tuple(rejected), g.jobs, RejectReason.UNAVAILABLE)
            )
            continue
        best = usable[0]
        per_unit = best.cores // g.cores_per_job
        wanted = math.ceil(g.jobs / per_unit)
        units = max(0, wanted - serving.get(g.id, 0))
        chosen: tuple[PlanItem, ...] = ()
        if units:
            cost = best.price_per_hour * units * Decimal(str(g.walltime_hours))
            per = best.price_per_hour / Decimal(str(best.hs23))
            item = PlanItem(
                g.id,
                best.id,
                units,
                min(g.jobs, units * per_unit),
                g.walltime_hours,
                cost,
                CostBreakdown(per),
            )
            items.append(item)
            chosen = (item,)
        rejected += [Rejection(o.id, RejectReason.MORE_EXPENSIVE) for o in usable[1:]]
        explanations.append(GroupExplanation(g.id, g.experiment, chosen, tuple(rejected[:5])))
    total = sum((i.cost for i in items), Decimal(0))
    return Plan(tuple(items), (), tuple(explanations), total, Decimal(0), solver="toy-greedy")

"""What is left of every hard limit for this round, after the running fleet: the solver's right-hand sides.

Capacity per offering, cores per quota family, facility and per-experiment spend rate (USD/h),
per-experiment budget (USD), egress cap (GB) and GPU count, and allocation node-hours. An allocation
paced EVEN may burn only its fair share of what is left in this horizon:
left × horizon / hours until it ends; an ASAP allocation may burn all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.pacing import node_hours_on_pace
from provisioner.domain import DemandGroup, Pacing, PlanningConstraints
from provisioner.planner.columns import FloatArray, OfferingColumns
from provisioner.planner.drain import FleetAssessment

INF = float("inf")


@dataclass(frozen=True, slots=True)
class Limits:
    experiments: tuple[str, ...]
    exp_index: dict[str, int]
    capacity: FloatArray  # units, per offering
    quota: FloatArray  # cores, per family code
    facility_spend: float  # USD per hour
    exp_spend: FloatArray  # USD per hour
    exp_budget: FloatArray  # USD
    exp_egress: FloatArray  # GB
    exp_gpus: FloatArray
    node_hours: FloatArray  # allocation node-hours usable this round (paced), per offering
    node_hours_unpaced: FloatArray  # allocation node-hours left at all, per offering


def build_limits(
    groups: Sequence[DemandGroup],
    cols: OfferingColumns,
    constraints: PlanningConstraints,
    fleet: FleetAssessment,
) -> Limits:
    names = sorted({g.experiment for g in groups} | set(constraints.experiments))
    exp_index = {e: k for k, e in enumerate(names)}
    capacity = cols.capacity.copy()
    for i, units in fleet.units_by_offering.items():
        capacity[i] -= units
    quota = np.full(len(cols.families), INF)
    family_code = {f: k for k, f in enumerate(cols.families)}
    for family, cores in constraints.family_quota_cores.items():
        k = family_code.get(family)
        if k is not None:
            quota[k] = cores - fleet.cores_by_family.get(k, 0)
    n = len(names)
    exp_spend, exp_budget = np.full(n, INF), np.full(n, INF)
    exp_egress, exp_gpus = np.full(n, INF), np.full(n, INF)
    for name, lim in constraints.experiments.items():
        k = exp_index[name]
        if lim.spend_rate_cap_per_hour is not None:
            used = fleet.spend_per_hour_by_experiment.get(name, 0)
            exp_spend[k] = float(lim.spend_rate_cap_per_hour - used)
        if lim.budget_remaining is not None:
            exp_budget[k] = float(lim.budget_remaining)
        if lim.egress_cap_gb is not None:
            exp_egress[k] = lim.egress_cap_gb
        if lim.max_gpus is not None:
            exp_gpus[k] = lim.max_gpus - fleet.gpus_by_experiment.get(name, 0)
    facility = INF
    if constraints.spend_rate_cap_per_hour is not None:
        facility = float(constraints.spend_rate_cap_per_hour - fleet.spend_per_hour)
    unpaced = cols.allocation_left.copy()
    paced = unpaced.copy()
    if constraints.now is not None:
        for i, o in enumerate(cols.offerings):
            alloc = o.allocation
            if alloc is None or alloc.pacing is not Pacing.EVEN:
                continue
            # The policy's one definition of "on pace": the even-burn target at the horizon's end.
            on_pace = node_hours_on_pace(alloc, constraints.now, constraints.horizon_hours)
            paced[i] = min(unpaced[i], on_pace)
    return Limits(
        experiments=tuple(names),
        exp_index=exp_index,
        capacity=capacity,
        quota=quota,
        facility_spend=facility,
        exp_spend=exp_spend,
        exp_budget=exp_budget,
        exp_egress=exp_egress,
        exp_gpus=exp_gpus,
        node_hours=paced,
        node_hours_unpaced=unpaced,
    )

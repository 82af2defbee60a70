"""What the running fleet means for a round: which units to drain, what demand they already cover, what they use.

Rules, each with its `DrainReason`:
* a paid unit (price > 0) of an experiment whose budget is exhausted is drained (OVER_BUDGET);
* a running unit with no job for `constraints.idle_drain_hours` is drained (IDLE: no jobs, no cost);
* a unit whose group has no pending demand left is drained (NO_DEMAND: it finishes its jobs and
  goes) — HPC pilots too: a pilot that costs no money still burns allocation hours or holds a node;
* an allocation pilot still queued when its allocation ends within twice the offering's start-up
  time, or any pilot of an allocation that has ended, is drained (ALLOCATION_ENDING).
A node Slurm's power saving resumed (group `slurm-node:<name>`) is neither IDLE nor NO_DEMAND here:
its demand is in Slurm's queue, not ours, and Slurm's SuspendProgram releases it (provisioner.slurm_power).
Busy units (and units still booting) keep serving their group: the pending jobs they will run within
the horizon are taken off the group's demand, so the planner does not start units for them twice.
Every live unit counts against capacity, quotas, GPU limits and spend-rate caps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from provisioner.domain import (
    LIVE_STATES,
    SLURM_NODE_GROUP_PREFIX,
    DemandGroup,
    DrainOrder,
    DrainReason,
    FleetUnit,
    ResourceState,
)
from provisioner.planner.columns import OfferingColumns


@dataclass(slots=True)
class FleetAssessment:
    drains: list[DrainOrder] = field(default_factory=list)
    covered_jobs: dict[str, int] = field(default_factory=dict)  # group id -> pending jobs the fleet takes
    units_by_offering: dict[int, int] = field(default_factory=dict)
    cores_by_family: dict[int, int] = field(default_factory=dict)
    gpus_by_experiment: dict[str, int] = field(default_factory=dict)
    spend_per_hour: Decimal = Decimal(0)
    spend_per_hour_by_experiment: dict[str, Decimal] = field(default_factory=dict)


def assess_fleet(
    fleet: Sequence[FleetUnit],
    groups: Sequence[DemandGroup],
    cols: OfferingColumns,
    horizon_hours: float,
    *,
    now_ts: float | None = None,
    idle_drain_hours: float = 0.0,
    out_of_budget: frozenset[str] = frozenset(),
) -> FleetAssessment:
    result = FleetAssessment()
    demand = {g.id: g for g in groups if g.jobs > 0}
    for unit in fleet:
        if unit.state not in LIVE_STATES:
            continue
        i = cols.index.get(unit.offering_id)
        _count_usage(result, unit, i, cols)
        if unit.state is ResourceState.DRAINING:
            continue
        group = demand.get(unit.group_id) if unit.group_id is not None else None
        held_by_slurm = unit.group_id is not None and unit.group_id.startswith(SLURM_NODE_GROUP_PREFIX)
        ending = _allocation_ending(unit, cols, i, now_ts)
        if ending:
            result.drains.append(DrainOrder(unit.resource_id, DrainReason.ALLOCATION_ENDING, ending))
            continue
        if (
            unit.state is ResourceState.RUNNING
            and not unit.busy
            and unit.busy_known  # no signal from the work: never drained as idle on a guess
            and unit.idle_hours >= idle_drain_hours
            and not held_by_slurm
        ):
            result.drains.append(
                DrainOrder(unit.resource_id, DrainReason.IDLE, f"idle for {unit.idle_hours:.2f} h")
            )
            continue
        if unit.experiment in out_of_budget and unit.price_per_hour > 0:
            # Budgets are hard limits: once spent and committed money reaches the budget, paid units go.
            result.drains.append(
                DrainOrder(unit.resource_id, DrainReason.OVER_BUDGET, f"{unit.experiment} budget exhausted")
            )
            continue
        if unit.group_id is not None and group is None:
            if held_by_slurm:
                continue
            result.drains.append(
                DrainOrder(
                    unit.resource_id, DrainReason.NO_DEMAND, f"group {unit.group_id} has no pending jobs"
                )
            )
            continue
        if group is not None and i is not None:
            covered = _jobs_covered(unit, group, cols, i, horizon_hours, now_ts)
            result.covered_jobs[group.id] = result.covered_jobs.get(group.id, 0) + covered
    return result


def _count_usage(result: FleetAssessment, unit: FleetUnit, i: int | None, cols: OfferingColumns) -> None:
    result.spend_per_hour += unit.price_per_hour
    if unit.experiment is not None:
        by_exp = result.spend_per_hour_by_experiment
        by_exp[unit.experiment] = by_exp.get(unit.experiment, Decimal(0)) + unit.price_per_hour
    if i is None:
        return
    result.units_by_offering[i] = result.units_by_offering.get(i, 0) + 1
    family = int(cols.family[i])
    result.cores_by_family[family] = result.cores_by_family.get(family, 0) + int(cols.cores[i])
    if unit.experiment is not None and cols.gpu_count[i] > 0:
        by_exp_gpu = result.gpus_by_experiment
        by_exp_gpu[unit.experiment] = by_exp_gpu.get(unit.experiment, 0) + int(cols.gpu_count[i])


def _allocation_ending(unit: FleetUnit, cols: OfferingColumns, i: int | None, now_ts: float | None) -> str:
    """Why this pilot goes because its allocation ends ("" if it stays)."""
    if i is None or now_ts is None:
        return ""
    alloc = cols.offerings[i].allocation
    if alloc is None:
        return ""
    left = alloc.ends.timestamp() - now_ts
    if left <= 0:
        return f"allocation {alloc.name} ended at {alloc.ends:%Y-%m-%d %H:%M} UTC"
    startup = float(cols.startup_hours[i]) * 3600
    if unit.state is ResourceState.PROVISIONING and left < 2 * startup:
        return f"still queued {left:.0f} s before allocation {alloc.name} ends"
    return ""


def _jobs_covered(
    unit: FleetUnit,
    group: DemandGroup,
    cols: OfferingColumns,
    i: int,
    horizon_hours: float,
    now_ts: float | None,
) -> int:
    """Pending jobs of `group` this unit will start within the horizon (after what it runs now)."""
    per_unit = int(cols.cores[i]) // max(group.cores_per_job, 1)
    if group.memory_gb_per_job > 0:
        per_unit = min(per_unit, math.floor(float(cols.memory_gb[i]) / group.memory_gb_per_job))
    if group.gpus_per_job > 0:
        per_unit = min(per_unit, int(cols.gpu_count[i]) // group.gpus_per_job)
    if per_unit <= 0:
        return 0
    run_hours = group.walltime_hours * group.reference_hs23_per_core / float(cols.hs23_per_core[i])
    window = horizon_hours
    if group.deadline is not None and now_ts is not None:
        window = min(window, max(0.0, (group.deadline.timestamp() - now_ts) / 3600.0))
    if unit.walltime_left_hours is not None:
        window = min(window, unit.walltime_left_hours)
    waves = math.floor(window / run_hours) if run_hours > 0 else 0
    if unit.busy:
        waves -= 1  # it is busy with a wave of already-running jobs first
    else:
        waves = max(waves, 1)  # still booting: it will run at least one wave of pending jobs
    return per_unit * max(waves, 0)

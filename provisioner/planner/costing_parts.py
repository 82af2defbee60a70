"""Costing the groups over the planner's worker processes (`workers.py`): the groups in parts, each part
costed by `candidates.build_candidates` here or in a worker, the candidates put back in the groups' order.

Every group's candidates depend only on the group and the round, so they are the same wherever its part
ran; groups of one `shape_key` go in one part where the sizes allow, as they share their costing.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from provisioner.domain import DemandGroup, PlanningConstraints
from provisioner.planner.candidates import TOP_K, BaseCosts, GroupCandidates, _Base, build_candidates
from provisioner.planner.columns import FloatArray, OfferingColumns
from provisioner.planner.compatibility import CompatContext, ReasonArray
from provisioner.planner.cost import GroupCosts, GroupEgress, PlanContext
from provisioner.planner.limits import Limits
from provisioner.planner.workers import Workers, split


def shape_key(group: DemandGroup) -> tuple[object, ...]:
    """What groups sharing costing work have in common: job shape and run time, the key of the cost without
    egress (`candidates.BaseCosts`), the dearest work a group can share. Not its experiment: groups of one
    shape in several experiments share that cost, and with the experiment in the key the 5,000-group
    instance of benchmarks/planner_scale.py (340 shapes, 645 with the experiment) costed 511 shapes over its 12
    parts, and 351 without."""
    return (
        group.cores_per_job,
        group.memory_gb_per_job,
        group.gpus_per_job,
        group.walltime_hours * group.reference_hs23_per_core,
        group.hs23_hours_per_job,
    )


# fewer groups are costed in one process: groups of one shape share their costing, which a part of its own
# costs again, and a part travels with the catalog's columns; on the 720-group instance of
# benchmarks/planner_scale.py (24 workflow types) 11 parts of 65 groups took 2.94 s against 2.60 s in one,
# and 2 parts of 347 (its 694 groups with demand left; one part costed here, one in the worker) 0.73 s
# against 0.90 s in one, pricing then paying 0.09 s more for the shapes the worker costed (2026-12-02,
# medians of 8 interleaved in one process; another such run: no difference, so noisy is this machine)
PART_MIN_GROUPS = 300
# parts per process, taken as each finishes one: costs differ between groups (egress, the first group of a
# shape pays for the shape), so parts of equal size are not equal work (5,000 groups: 12 parts of 417)
PARTS_PER_WORKER = 6

# a group's candidates without its group (the caller has it): what a worker sends back
_Found = tuple[int, FloatArray, FloatArray, ReasonArray, int, GroupEgress | None, FloatArray | None]


@dataclass(frozen=True, slots=True)
class _CostingPart:
    """Some groups to cost, with the round's context. Costed here, it uses the round's `compat` (its caches
    shared with the other parts costed here); sent to a worker, it travels without the offering objects
    (costing reads only the columns' arrays: 5.7 MB and 4 ms to pickle, against 13 MB and 0.75 s with
    them) and without `compat`, which the worker builds again from what it is made of."""

    groups: list[DemandGroup]
    demand: list[int]
    cols: OfferingColumns
    plan_ctx: PlanContext
    compat: CompatContext
    top_k: int | None
    bases: BaseCosts | None = None  # costed here: where its costs without egress are kept (they stay here)

    def __reduce__(self) -> tuple[object, ...]:
        compat = self.compat
        return (
            _travelled,
            (
                self.groups,
                self.demand,
                self.cols.without_offerings(),
                self.plan_ctx,
                compat.constraints,
                compat.limits,
                self.top_k,
            ),
        )


def _travelled(
    groups: list[DemandGroup],
    demand: list[int],
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    constraints: PlanningConstraints,
    limits: Limits,
    top_k: int | None,
) -> _CostingPart:
    """A part unpickled in a worker: its compatibility context built again."""
    return _CostingPart(
        groups, demand, cols, plan_ctx, CompatContext.build(cols, constraints, plan_ctx, limits), top_k
    )


# a part's costed groups, and, costed in a worker, the costs without egress of the shapes it costed (catalog
# pricing asks for them next: costing them again here took 0.3-0.4 s of pricing's time on the 5,000-group
# instance of benchmarks/planner_scale.py; sent back thin, about 0.1 MB a shape: whole, 0.5 MB a shape took
# as much time again in costing)
# and the static reasons its groups' rule sets gave (catalog pricing reads them for every group: finding them
# again here was 3-5 % of pricing's samples in a py-spy profile at 5,000 groups, 0.1-0.2 s on a slow machine)
_PartFound = tuple[list[_Found], dict[tuple[object, ...], _Base], dict[tuple[object, ...], ReasonArray]]


def _cost_part(part: _CostingPart) -> _PartFound:
    bases = part.bases if part.bases is not None else BaseCosts(part.cols, part.plan_ctx)
    found = build_candidates(
        part.groups, part.demand, part.cols, part.plan_ctx, part.compat, top_k=part.top_k, bases=bases
    )
    costed = [
        (c.demand, c.solver.data, c.rejected.data, c.rejected_reason, c.compatible_count, c.egress, c.packed)
        for c in found
    ]
    if bases is part.bases:  # costed here: its context and shapes are this process's own
        return costed, {}, {}
    return costed, bases.entries(), part.compat.statics()


def build_candidates_on(
    workers: Workers,
    groups: Sequence[DemandGroup],
    demand: Sequence[int],
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    compat: CompatContext,
    top_k: int | None = TOP_K,
    timings: MutableMapping[str, float] | None = None,
    bases: BaseCosts | None = None,
) -> list[GroupCandidates]:
    """`build_candidates` with the groups split over `workers`, groups of one `shape_key` together (they
    share their costing). The same candidates: each group's depend only on the group and the round.
    `timings`: the whole phase's wall time, as costing; `bases`: where groups costed here keep their costs
    without egress for the phases after (catalog pricing asks for the same shapes)."""
    parts = (
        split([shape_key(g) for g in groups], PARTS_PER_WORKER * workers.count, PART_MIN_GROUPS)
        if workers.count > 1
        else []
    )
    if len(parts) <= 1:  # one process, or too few groups to split
        return build_candidates(
            groups, demand, cols, plan_ctx, compat, top_k=top_k, timings=timings, bases=bases
        )
    t0 = time.perf_counter()
    jobs = [
        _CostingPart(
            [groups[k] for k in part], [demand[k] for k in part], cols, plan_ctx, compat, top_k, bases
        )
        for part in parts
    ]
    results = workers.map(_cost_part, jobs)
    out: list[GroupCandidates | None] = [None] * len(groups)
    for part, (found, shapes, statics) in zip(parts, results, strict=True):
        compat.adopt_statics(statics)
        if bases is not None:
            bases.adopt(shapes)
        for k, (jobs_left, solver, rejected, reason, compatible, egress, packed) in zip(
            part, found, strict=True
        ):
            out[k] = GroupCandidates(
                groups[k],
                jobs_left,
                GroupCosts(solver),
                GroupCosts(rejected),
                reason,
                compatible,
                egress,
                packed,
            )
    if timings is not None:
        timings["costing"] = timings.get("costing", 0.0) + time.perf_counter() - t0
    return [c for c in out if c is not None]

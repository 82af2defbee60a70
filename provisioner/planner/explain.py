"""Why each group got what it got: chosen items, unserved jobs with the binding reason, and the best rejected alternatives.

Selection rule for the rejected alternatives (at most `MAX_REJECTED`, best first):
1. offerings CHEAPER per HS23-hour than the chosen one that the group could not use — the cheapest
   of each distinct reason, up to 3 ("arm64 is 30% cheaper but the group runs only on x86_64");
2. then the runners-up the group could use but did not (the next-cheapest compatible offerings), each
   with the limit that stopped it (capacity, quota, spend rate, budget, egress cap, allocation pacing)
   or, when none binds, "more expensive";
3. then, to fill up, the cheapest incompatible offerings of reasons not shown yet.
A group left (partly) unserved names the limit that binds on its cheapest usable offering, or, with
no usable offering at all, the reason that rejects most of its cheapest offerings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from itertools import chain

import numpy as np

from provisioner.domain import (
    DemandGroup,
    GroupExplanation,
    PlanItem,
    Rejection,
    RejectReason,
)
from provisioner.planner.candidates import GroupCandidates
from provisioner.planner.columns import OfferingColumns
from provisioner.planner.compatibility import reason_of
from provisioner.planner.cost import FIELDS, GroupCosts
from provisioner.planner.limits import Limits
from provisioner.planner.problem import Problem

MAX_REJECTED = 5
MAX_CHEAPER_INCOMPATIBLE = 3


def limits_after(
    problem: Problem, cols: OfferingColumns, items: Sequence[PlanItem], limits: Limits
) -> Limits:
    """What is left of every limit once the plan's items are started."""
    capacity, quota = limits.capacity.copy(), limits.quota.copy()
    spend, budget = limits.exp_spend.copy(), limits.exp_budget.copy()
    egress, gpus = limits.exp_egress.copy(), limits.exp_gpus.copy()
    node_hours, unpaced = limits.node_hours.copy(), limits.node_hours_unpaced.copy()
    facility = limits.facility_spend
    groups = {c.group.id: c.group for c in problem.candidates}
    for item in items:
        i = cols.index[item.offering_id]
        o = cols.offerings[i]
        group = groups[item.group_id]
        k = limits.exp_index[group.experiment]
        capacity[i] -= item.units
        quota[cols.family[i]] -= item.units * o.cores
        rate = float(o.price_per_hour) * item.units
        facility -= rate
        spend[k] -= rate
        budget[k] -= float(item.cost)
        if group.data_location is not None and group.data_location != o.location:
            egress[k] -= item.jobs * (group.input_gb_per_job + group.output_gb_per_job)
        gpus[k] -= item.units * o.gpu_count
        if o.allocation is not None:
            node_hours[i] -= item.units * item.hours
            unpaced[i] -= item.units * item.hours
    return replace(
        limits,
        capacity=capacity,
        quota=quota,
        facility_spend=facility,
        exp_spend=spend,
        exp_budget=budget,
        exp_egress=egress,
        exp_gpus=gpus,
        node_hours=node_hours,
        node_hours_unpaced=unpaced,
    )


@dataclass(frozen=True, slots=True)
class _Binding:
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left of every limit after the plan (`limits_after`), as Python lists, with the offerings'
    price and start-up hours: `binding_limit` reads a few of each for every shortlist entry it checks,
    and reading numpy scalars and Decimal prices one by one is slow (converted once per plan: 39,404
    offerings, a few milliseconds)."""

    exp_index: dict[str, int]
    capacity: list[float]
    quota: list[float]  # per family code
    family: list[int]  # per offering
    facility_spend: float
    exp_spend: list[float]
    exp_budget: list[float]
    exp_egress: list[float]
    exp_gpus: list[float]
    node_hours: list[float]
    node_hours_unpaced: list[float]
    price: list[float]  # USD per unit-hour, per offering
    startup_hours: list[float]

    @classmethod
    def of(cls, left: Limits, cols: OfferingColumns) -> Remaining:
        return cls(
            left.exp_index,
            left.capacity.tolist(),
            left.quota.tolist(),
            cols.family.tolist(),
            float(left.facility_spend),
            left.exp_spend.tolist(),
            left.exp_budget.tolist(),
            left.exp_egress.tolist(),
            left.exp_gpus.tolist(),
            left.node_hours.tolist(),
            left.node_hours_unpaced.tolist(),
            cols.price.tolist(),
            cols.startup_hours.tolist(),
        )


# a shortlist entry's figures as Python numbers (reading numpy scalars one by one is slow): its offering
# (a float: int() it), total, wave hours, egress USD and GB per job; plain lists, as building a named
# tuple per entry took 8 % of the explanation's samples in a py-spy profile at 5,000 groups
_Row = list[float]
_ROW_FIELDS = [
    FIELDS.index(name)
    for name in ("offering", "total", "wave_hours", "egress_usd_per_job", "egress_gb_per_job")
]
FIRST_ROWS = 8  # shortlist entries read at first: the explanation mostly needs 5 or so


def _rows(costs: GroupCosts) -> Iterator[_Row]:
    """The shortlist's entries, the first FIRST_ROWS converted first: the rest only when asked for."""
    head: list[_Row] = costs.data[_ROW_FIELDS, :FIRST_ROWS].T.tolist()
    return chain(head, _rest(costs)) if len(costs) > FIRST_ROWS else iter(head)


def _rest(costs: GroupCosts) -> Iterator[_Row]:
    yield from costs.data[_ROW_FIELDS, FIRST_ROWS:].T.tolist()


def binding_limit(group: DemandGroup, row: _Row, cols: OfferingColumns, left: Remaining) -> _Binding | None:
    """The limit that stops one more unit (one wave) of shortlist entry `row`, or None if none does."""
    offering, _, wave_hours, egress_usd, egress_gb = row
    i = int(offering)
    k = left.exp_index[group.experiment]
    need_hours = wave_hours + left.startup_hours[i]
    price = left.price[i]
    if left.capacity[i] < 1:
        return _Binding(
            RejectReason.CAPACITY, f"no more units of {cols.offerings[i].instance_type} available"
        )
    o = cols.offerings[i]
    quota = left.quota[left.family[i]]
    if quota < o.cores:
        return _Binding(RejectReason.QUOTA, f"family {o.family} quota has {max(0, quota):.0f} cores left")
    if left.exp_gpus[k] < o.gpu_count:
        return _Binding(RejectReason.QUOTA, f"{group.experiment} GPU limit reached")
    if price > min(left.facility_spend, left.exp_spend[k]) + 1e-9:
        return _Binding(
            RejectReason.SPEND_RATE, f"one more unit at ${price:.4f}/h would exceed the spend-rate cap"
        )
    one_wave = price * need_hours + egress_usd
    if one_wave > left.exp_budget[k] + 1e-9:
        return _Binding(
            RejectReason.OVER_BUDGET,
            f"{group.experiment} has ${max(0.0, left.exp_budget[k]):.2f} left, a unit costs ${one_wave:.2f}",
        )
    if egress_gb > left.exp_egress[k] + 1e-9:
        return _Binding(
            RejectReason.EGRESS_CAP,
            f"{group.experiment} egress cap has {max(0.0, left.exp_egress[k]):.1f} GB left",
        )
    if left.node_hours_unpaced[i] < need_hours:
        return _Binding(
            RejectReason.ALLOCATION_EXHAUSTED,
            f"allocation has {max(0.0, left.node_hours_unpaced[i]):.1f} node-hours left",
        )
    if left.node_hours[i] < need_hours:
        return _Binding(
            RejectReason.ALLOCATION_PACED,
            f"pacing allows {max(0.0, left.node_hours[i]):.1f} more node-hours this round",
        )
    return None


def _percent(cost: float, reference: float) -> str:
    if not math.isfinite(reference) or reference <= 0 or not math.isfinite(cost):
        return ""
    delta = (cost - reference) / reference * 100
    return f"{abs(delta):.0f}% {'cheaper' if delta < 0 else 'dearer'} per HS23-hour than the chosen offering"


def _incompatible_detail(
    reason: RejectReason, group: DemandGroup, cols: OfferingColumns, i: int, vs: str
) -> str:
    o = cols.offerings[i]
    # only the reason's own sentence is written (it runs for thousands of groups)
    why: str
    if reason is RejectReason.WRONG_ARCH:
        why = f"{o.arch} but the group runs only on {', '.join(sorted(a.value for a in group.archs))}"
    elif reason is RejectReason.NO_GPU:
        why = f"has {o.gpu_count}× {o.gpu_model or 'no GPU'}, jobs need {group.gpus_per_job}× {group.gpu_model or 'any GPU'}"
    elif reason is RejectReason.MEMORY:
        why = f"{o.memory_gb:g} GB for jobs needing {group.memory_gb_per_job:g} GB"
    elif reason is RejectReason.CORES:
        why = f"{o.cores} cores for jobs needing {group.cores_per_job}"
    elif reason is RejectReason.WALLTIME:
        why = f"max walltime {o.max_walltime_hours} h"
    elif reason is RejectReason.NOT_PREEMPTIBLE:
        why = "the group's jobs are not preemptible"
    elif reason is RejectReason.MARKET_NOT_ALLOWED:
        why = f"{o.market} not allowed for {group.experiment}"
    elif reason is RejectReason.BACKEND_NOT_ALLOWED:
        why = f"backend {o.backend} not allowed for {group.experiment}"
    else:
        why = reason.value
    return f"{o.instance_type} ({o.market}, {o.region}): {why}" + (f"; {vs}" if vs else "")


def explain_group(
    cand: GroupCandidates, items: Sequence[PlanItem], cols: OfferingColumns, left: Remaining
) -> GroupExplanation:
    group = cand.group
    chosen = {cols.index[it.offering_id] for it in items}
    served = sum(it.jobs for it in items)
    solver, rejected_short = cand.solver, cand.rejected
    chosen_costs = [
        cost
        for i, cost in zip(solver.data[0].tolist(), solver.total.tolist(), strict=True)
        if int(i) in chosen
    ]
    reference = min(chosen_costs) if chosen_costs else float("inf")
    rejected_offering, rejected_total = rejected_short.offering.tolist(), rejected_short.total.tolist()
    rejected_codes = cand.rejected_reason.tolist()
    out: list[Rejection] = []
    shown: set[int] = set()
    seen_reasons: set[RejectReason] = set()

    def add(i: int, reason: RejectReason, cost: float, detail: str) -> None:
        if i in shown or len(out) >= MAX_REJECTED:
            return
        shown.add(i)
        rate = Decimal(f"{cost:.10f}") if math.isfinite(cost) else None
        out.append(Rejection(cols.offerings[i].id, reason, rate, detail))

    # 1. cheaper, but not usable: the first of each reason (not by a loop in Python: an unserved group has
    # every rejected offering cheaper, mostly for one reason)
    cheaper = np.flatnonzero(rejected_short.total < reference).tolist()
    cheaper_codes = [rejected_codes[k] for k in cheaper]
    for code in list(dict.fromkeys(cheaper_codes))[:MAX_CHEAPER_INCOMPATIBLE]:  # in order of first seen
        k = cheaper[cheaper_codes.index(code)]
        i, cost, reason = rejected_offering[k], rejected_total[k], reason_of(rejected_codes[k])
        seen_reasons.add(reason)
        add(i, reason, cost, _incompatible_detail(reason, group, cols, i, _percent(cost, reference)))
    # 2. usable runners-up, with the limit that stopped them
    unserved = max(0, cand.demand - served)
    unserved_reason: RejectReason | None = None
    unserved_detail = ""
    for row in _rows(solver):
        if len(out) >= MAX_REJECTED and (unserved == 0 or unserved_reason is not None):
            break  # nothing more to show, and the limit binding the unserved jobs is known (or moot)
        i = int(row[0])
        binding = binding_limit(group, row, cols, left)
        if binding is not None and unserved_reason is None:
            unserved_reason, unserved_detail = binding.reason, f"{cols.offerings[i].id}: {binding.detail}"
        if i in chosen or len(out) >= MAX_REJECTED:
            continue
        cost = row[1]
        if binding is None:
            add(i, RejectReason.MORE_EXPENSIVE, cost, _percent(cost, reference))
        else:
            add(i, binding.reason, cost, f"{binding.detail}; {_percent(cost, reference)}".rstrip("; "))
    # 3. fill up with other incompatible reasons, then anything
    for i, cost, code in zip(rejected_offering, rejected_total, rejected_codes, strict=True):
        if len(out) >= MAX_REJECTED:
            break  # `add` would refuse it: skip writing its detail
        if (reason := reason_of(code)) not in seen_reasons:
            seen_reasons.add(reason)
            add(i, reason, cost, _incompatible_detail(reason, group, cols, i, _percent(cost, reference)))
    note = ""
    if unserved:
        if len(solver.offering) == 0 and len(rejected_short.offering):
            codes = cand.rejected_reason.tolist()
            common = max(set(codes), key=lambda c: (codes.count(c), -codes.index(c)))
            unserved_reason = reason_of(int(common))
            cheapest = cols.offerings[int(rejected_short.offering[codes.index(common)])].id
            note = (
                f"no usable offering: {codes.count(common)} of the {len(codes)} cheapest are rejected for "
                f"{unserved_reason.value} (e.g. {cheapest})"
            )
        elif len(solver.offering) == 0:
            unserved_reason, note = RejectReason.CAPACITY, "no offering in the catalog"
        else:
            unserved_reason = unserved_reason or RejectReason.CAPACITY
            note = unserved_detail or "limits of the other groups' more valuable work"
    return GroupExplanation(
        group_id=group.id,
        experiment=group.experiment,
        chosen=tuple(items),
        rejected=tuple(out),
        unserved_jobs=unserved,
        unserved_reason=unserved_reason if unserved else None,
        note=note,
    )


def explain_quiet(group: DemandGroup, covered: int) -> GroupExplanation:
    """A group with nothing to plan: no pending jobs, or all of them covered by the running fleet."""
    note = (
        "no pending jobs"
        if group.jobs == 0
        else f"the running fleet covers its {group.jobs} pending jobs ({covered} slots)"
    )
    return GroupExplanation(group_id=group.id, experiment=group.experiment, chosen=(), rejected=(), note=note)

"""Which offerings can take a group's jobs, and if not, the first reason why (vectorised over the catalog).

A reason code per offering: 0 = compatible, k = `REASONS[k - 1]`; an offering reports the first
rule it breaks in the order of `REASONS`: what the operator disabled, what the experiment's policy
forbids, what the jobs physically need, time (walltime, allocation end, deadline), what is left of
capacity, quotas and spend rate for one unit, and — checked only on the offerings the planner
prices — the group's cost cap, the budget for one wave, the egress cap and allocation pacing.

Groups share most of these masks (same experiment, same shape, same run time), so each part is
computed once per distinct key and cached for the round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from provisioner.domain import DemandGroup, ExperimentLimits, Market, PlanningConstraints, RejectReason
from provisioner.planner.columns import ARCHS, MARKETS, BoolArray, FloatArray, IntArray, OfferingColumns
from provisioner.planner.cost import GroupCosts, PlanContext, jobs_per_unit
from provisioner.planner.limits import Limits

ReasonArray = npt.NDArray[np.uint8]

REASONS: tuple[RejectReason, ...] = (
    RejectReason.NOT_IN_POLICY,
    RejectReason.UNAVAILABLE,
    RejectReason.BACKEND_NOT_ALLOWED,
    RejectReason.MARKET_NOT_ALLOWED,
    RejectReason.NOT_PREEMPTIBLE,
    RejectReason.WRONG_ARCH,
    RejectReason.NO_GPU,
    RejectReason.GPU_NOT_ALLOWED,
    RejectReason.CORES,
    RejectReason.MEMORY,
    RejectReason.WALLTIME,
    RejectReason.ALLOCATION_EXHAUSTED,
    RejectReason.DEADLINE,
    RejectReason.CAPACITY,
    RejectReason.QUOTA,
    RejectReason.SPEND_RATE,
    RejectReason.OVER_MAX_COST,
    RejectReason.OVER_BUDGET,
    RejectReason.EGRESS_CAP,
    RejectReason.ALLOCATION_PACED,
)
CODE = {reason: np.uint8(k + 1) for k, reason in enumerate(REASONS)}


def reason_of(code: int) -> RejectReason:
    return REASONS[code - 1]


class _Reasons:
    """Builds one reason array; later rules never overwrite an earlier one."""

    def __init__(self, n: int) -> None:
        self.out = np.zeros(n, dtype=np.uint8)

    def mark(self, reason: RejectReason, failing: BoolArray | np.bool_) -> None:
        np.putmask(self.out, (self.out == 0) & failing, CODE[reason])


def first_reason(*parts: ReasonArray) -> ReasonArray:
    """Combine reason arrays of successive rule sets: the first non-zero wins."""
    out = parts[0]
    for part in parts[1:]:
        out = np.where(out == 0, part, out)
    return out


@dataclass(slots=True)
class CompatContext:
    """The round's masks, cached per key (policy, shape, run time, experiment)."""

    cols: OfferingColumns
    constraints: PlanningConstraints
    plan_ctx: PlanContext
    limits: Limits
    # per offering, precomputed once: hs23_per_core × hours, compared with a group's walltime × reference
    walltime_work: FloatArray
    alloc_end_work: FloatArray
    alloc_left_work: FloatArray
    not_started: BoolArray
    _policy: dict[tuple[object, ...], ReasonArray] = field(default_factory=dict)
    _shape: dict[tuple[object, ...], tuple[IntArray, ReasonArray]] = field(default_factory=dict)
    _timing: dict[tuple[object, ...], ReasonArray] = field(default_factory=dict)
    _room: dict[str, ReasonArray] = field(default_factory=dict)
    _static: dict[tuple[object, ...], ReasonArray] = field(default_factory=dict)

    @classmethod
    def build(
        cls, cols: OfferingColumns, constraints: PlanningConstraints, plan_ctx: PlanContext, limits: Limits
    ) -> CompatContext:
        hs = cols.hs23_per_core
        with np.errstate(invalid="ignore"):
            left_hours = limits.node_hours_unpaced - cols.startup_hours
            alloc_left_work = np.where(left_hours > 0, hs * left_hours, -1.0)
            if plan_ctx.now_ts is None:
                alloc_end_work = np.full(len(cols), np.inf)
                not_started = np.zeros(len(cols), dtype=bool)
            else:
                alloc_end_work = hs * (cols.allocation_ends - plan_ctx.now_ts) / 3600.0
                not_started = cols.allocation_starts > plan_ctx.now_ts
        return cls(
            cols=cols,
            constraints=constraints,
            plan_ctx=plan_ctx,
            limits=limits,
            walltime_work=hs * cols.max_walltime,
            alloc_end_work=alloc_end_work,
            alloc_left_work=alloc_left_work,
            not_started=not_started,
        )

    def static_reasons(self, group: DemandGroup) -> tuple[IntArray, ReasonArray]:
        """Jobs per unit and the reason code per offering, before any cost is known."""
        jpu, shape = self.shape(group)
        key = (*self._policy_key(group), *self._shape_key(group), *self._timing_key(group))
        found = self._static.get(key)
        if found is None:
            found = first_reason(self.policy(group), shape, self.timing(group), self.room(group.experiment))
            self._static[key] = found
        return jpu, found

    def statics(self) -> dict[tuple[object, ...], ReasonArray]:
        """The static reasons found so far, by key: what a context of the same round in another process
        adopts (`adopt_statics`) instead of finding them again."""
        return dict(self._static)

    def adopt_statics(self, entries: dict[tuple[object, ...], ReasonArray]) -> None:
        """Keep static reasons a context of the same round (columns, constraints, context and limits) found
        in another process: they depend only on their key and the round."""
        for key, reasons in entries.items():
            self._static.setdefault(key, reasons)

    @staticmethod
    def _policy_key(group: DemandGroup) -> tuple[object, ...]:
        return (group.experiment, group.preemptible, group.archs, group.gpus_per_job > 0, group.gpu_model)

    @staticmethod
    def _shape_key(group: DemandGroup) -> tuple[object, ...]:
        return (group.cores_per_job, group.memory_gb_per_job, group.gpus_per_job)

    @staticmethod
    def _timing_key(group: DemandGroup) -> tuple[object, ...]:
        return (group.walltime_hours * group.reference_hs23_per_core, group.deadline)

    def policy(self, group: DemandGroup) -> ReasonArray:
        key = self._policy_key(group)
        found = self._policy.get(key)
        if found is None:
            found = self._policy_reasons(group)
            self._policy[key] = found
        return found

    def _policy_reasons(self, group: DemandGroup) -> ReasonArray:
        cols = self.cols
        lim = self.constraints.experiments.get(group.experiment) or ExperimentLimits(group.experiment)
        r = _Reasons(len(cols))
        if self.constraints.only_named_experiments and group.experiment not in self.constraints.experiments:
            r.mark(RejectReason.NOT_IN_POLICY, np.bool_(True))  # fails closed: no offering at all
        r.mark(RejectReason.UNAVAILABLE, self.plan_ctx.unavailable)
        if lim.allowed_backends is not None:
            r.mark(
                RejectReason.BACKEND_NOT_ALLOWED, ~_allowed(cols.backend, cols.backends, lim.allowed_backends)
            )
        if lim.allowed_markets is not None:
            r.mark(
                RejectReason.MARKET_NOT_ALLOWED,
                ~np.isin(cols.market, [MARKETS.index(m) for m in lim.allowed_markets]),
            )
        if not group.preemptible:
            r.mark(RejectReason.NOT_PREEMPTIBLE, cols.market == MARKETS.index(Market.BACKFILL))
        archs = group.archs if lim.allowed_archs is None else group.archs & lim.allowed_archs
        r.mark(RejectReason.WRONG_ARCH, ~np.isin(cols.arch, [ARCHS.index(a) for a in archs]))
        if group.gpus_per_job > 0:
            no_gpu = cols.gpu_count < group.gpus_per_job
            if group.gpu_model is not None:
                wanted = cols.gpu_models.index(group.gpu_model) if group.gpu_model in cols.gpu_models else -2
                no_gpu = no_gpu | (cols.gpu_model != wanted)
            r.mark(RejectReason.NO_GPU, no_gpu)
        if lim.allowed_gpu_models is not None:
            allowed = (cols.gpu_model < 0) | _allowed(cols.gpu_model, cols.gpu_models, lim.allowed_gpu_models)
            r.mark(RejectReason.GPU_NOT_ALLOWED, ~allowed)
        return r.out

    def shape(self, group: DemandGroup) -> tuple[IntArray, ReasonArray]:
        key = self._shape_key(group)
        found = self._shape.get(key)
        if found is None:
            jpu = jobs_per_unit(group, self.cols)
            r = _Reasons(len(self.cols))
            r.mark(RejectReason.CORES, self.cols.cores < group.cores_per_job)
            r.mark(RejectReason.MEMORY, jpu <= 0)  # enough cores (and GPUs, checked before) but not memory
            found = (jpu, r.out)
            self._shape[key] = found
        return found

    def timing(self, group: DemandGroup) -> ReasonArray:
        key = self._timing_key(group)
        found = self._timing.get(key)
        if found is None:
            work = group.walltime_hours * group.reference_hs23_per_core  # run hours × hs23_per_core
            r = _Reasons(len(self.cols))
            r.mark(RejectReason.WALLTIME, self.walltime_work < work)
            r.mark(
                RejectReason.ALLOCATION_EXHAUSTED,
                (self.alloc_end_work < work) | (self.alloc_left_work < work) | self.not_started,
            )
            if group.deadline is not None and self.plan_ctx.now_ts is not None:
                hours = (group.deadline.timestamp() - self.plan_ctx.now_ts) / 3600.0
                r.mark(RejectReason.DEADLINE, self.cols.hs23_per_core * hours < work)
            found = r.out
            self._timing[key] = found
        return found

    def room(self, experiment: str) -> ReasonArray:
        """Offerings where not even one unit fits in what is left of capacity, quotas and spend rate."""
        found = self._room.get(experiment)
        if found is None:
            cols, lim = self.cols, self.limits
            k = lim.exp_index[experiment]
            r = _Reasons(len(cols))
            r.mark(RejectReason.CAPACITY, lim.capacity < 1)
            r.mark(
                RejectReason.QUOTA, (lim.quota[cols.family] < cols.cores) | (lim.exp_gpus[k] < cols.gpu_count)
            )
            r.mark(RejectReason.SPEND_RATE, cols.price > min(lim.facility_spend, float(lim.exp_spend[k])))
            found = r.out
            self._room[experiment] = found
        return found

    def priced_reasons(self, group: DemandGroup, costs: GroupCosts) -> ReasonArray:
        """The rules that need the price: cost cap, budget for one wave, egress cap, allocation pacing."""
        cap = group.max_cost_per_hs23_hour
        return self._priced(
            self.limits.exp_index[group.experiment], None if cap is None else float(cap), costs
        )

    def pair_priced_reasons(self, exp: IntArray, cap: FloatArray, costs: GroupCosts) -> ReasonArray:
        """`priced_reasons` of (group, offering) pairs of any groups at once (`pricing.py`'s columns): per
        column its group's experiment index and cost cap (inf where it has none)."""
        return self._priced(exp, cap, costs)

    def _priced(self, k: int | IntArray, cap: float | FloatArray | None, costs: GroupCosts) -> ReasonArray:
        """A limit a group does not have (inf) never rejects, so per column the rules mark alike whether a
        rule is skipped or checked against inf; paced node-hours are at most the unpaced (`limits.py`), so
        offerings without an allocation (inf) never fail either."""
        lim, cols = self.limits, self.cols
        idx = costs.offering
        r = _Reasons(len(idx))
        if cap is not None:
            r.mark(RejectReason.OVER_MAX_COST, costs.total > cap)
        wave_hours = costs.wave_hours
        need = wave_hours + cols.startup_hours[idx]  # one wave of one unit
        budget = lim.exp_budget[k]
        if np.isfinite(budget).any():
            r.mark(
                RejectReason.OVER_BUDGET,
                cols.price[idx] * need + costs.egress_budget_usd_per_job > budget,
            )
        egress = lim.exp_egress[k]
        if np.isfinite(egress).any():
            r.mark(RejectReason.EGRESS_CAP, costs.egress_gb_per_job > egress)
        node_hours = lim.node_hours[idx]
        if np.isfinite(node_hours).any():
            r.mark(RejectReason.ALLOCATION_EXHAUSTED, lim.node_hours_unpaced[idx] < need)
            r.mark(RejectReason.ALLOCATION_PACED, node_hours < need)
        return r.out


def _allowed(codes: IntArray, names: tuple[str, ...], allowed: frozenset[str]) -> BoolArray:
    return np.isin(codes, [k for k, name in enumerate(names) if name in allowed])

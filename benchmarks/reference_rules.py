"""The planning rules read afresh from the domain's documentation, for the independent reference and the plan checker.

Written apart from `provisioner/planner/` on purpose (it imports only the domain's data types), so
that a misreading in the planner's cost, compatibility or limits code shows up as a disagreement:

* compatibility: not marked unavailable; backend, market, architecture and GPU model allowed by the
  experiment; backfill only for preemptible work; the GPU count and model the jobs need; at least
  one job fits (cores, memory, GPUs); the run time fits the offering's walltime limit, the
  deadline and the allocation's end; the allocation has started.
* economics of a (group, offering) pair: a job runs T = walltime × reference HS23/core ÷ the
  offering's HS23/core hours; restart-on-interruption at rate λ makes a wave last T·(e^{λT}−1)/(λT);
  a unit runs W = max(1, ⌊window / wave⌋) waves (window: the horizon, or less before a deadline)
  of k jobs each; each unit-wave is paid whole, and each unit pays its start-up.
* egress: marginal tiers from the GB already moved out of a source this period, one tier table per
  source, the volume shared by every transfer leaving that source (inputs of groups whose data
  sits there, outputs of jobs run there for data elsewhere).
* limits: capacity, family quotas, facility and experiment spend rate, experiment budget, egress
  GB cap and GPUs, allocation node-hours (EVEN pacing: the even-burn share at the horizon's end).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from provisioner.domain import (
    DemandGroup,
    EgressTier,
    ExperimentLimits,
    Market,
    Offering,
    Pacing,
    PlanningConstraints,
)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
INF = math.inf


def job_value(group: DemandGroup, constraints: PlanningConstraints) -> float:
    """Value of serving one job: the experiment's share × 2^(priority/10) × the job's HS23-hours."""
    lim = constraints.experiments.get(group.experiment)
    share = lim.share if lim is not None else 1.0
    return share * 2.0 ** (max(-200, min(200, group.priority)) / 10.0) * group.hs23_hours_per_job


def usable_node_hours(o: Offering, now: datetime | None, horizon_hours: float) -> float:
    """Allocation node-hours this round may book (inf if not an allocation): the grant less what is
    settled, in flight and committed; EVEN: under the even line half a horizon ahead, except in the
    last two horizons before the end (docs/policy-format.md, the committed-hours ledger)."""
    a = o.allocation
    if a is None:
        return INF
    booked = a.node_hours_used + a.node_hours_in_flight + a.node_hours_committed
    left = max(0.0, a.node_hours_granted - booked)
    if now is None:
        return left
    if not (a.starts <= now < a.ends) or left <= 0:
        return 0.0
    if a.pacing is not Pacing.EVEN or (a.ends - now).total_seconds() <= 2 * horizon_hours * 3600.0:
        return left
    span = (a.ends - a.starts).total_seconds()
    elapsed_at_lookahead = (now - a.starts).total_seconds() + horizon_hours * 3600.0 / 2
    due = a.node_hours_granted * min(1.0, max(0.0, elapsed_at_lookahead / span))
    return min(left, max(0.0, due - booked))


def tier_segments(tiers: Sequence[EgressTier], used_gb: float, reach_gb: float) -> list[tuple[float, float]]:
    """(width GB, USD/GB) of the marginal tiers met moving up to `reach_gb` after `used_gb` already moved."""
    out: list[tuple[float, float]] = []
    lower = 0.0
    start, end = used_gb, used_gb + reach_gb
    for k, tier in enumerate(tiers):
        upper = INF if tier.up_to_gb is None or k == len(tiers) - 1 else float(tier.up_to_gb)
        lo, hi = max(lower, start), min(upper, end)
        if hi > lo:
            out.append((hi - lo, float(tier.usd_per_gb)))
        if upper >= end:
            break
        lower = upper
    return out


def tier_cost(tiers: Sequence[EgressTier], used_gb: float, gb: float) -> float:
    return sum(w * r for w, r in tier_segments(tiers, used_gb, gb)) if gb > 0 else 0.0


class Catalog:
    """The offerings as arrays, built once."""

    def __init__(self, offerings: Sequence[Offering], constraints: PlanningConstraints) -> None:
        self.offerings = tuple(offerings)
        self.index = {o.id: i for i, o in enumerate(self.offerings)}
        offs = self.offerings
        self.cores = np.array([o.cores for o in offs], dtype=np.int64)
        self.memory = np.array([o.memory_gb for o in offs], dtype=np.float64)
        self.gpus = np.array([o.gpu_count for o in offs], dtype=np.int64)
        self.gpu_model = np.array([o.gpu_model or "" for o in offs], dtype=object)
        self.arch = np.array([o.arch.value for o in offs], dtype=object)
        self.market = np.array([o.market.value for o in offs], dtype=object)
        self.backend = np.array([o.backend for o in offs], dtype=object)
        self.family = np.array([o.family for o in offs], dtype=object)
        self.location = np.array([o.location for o in offs], dtype=object)
        self.price = np.array([float(o.price_per_hour) for o in offs], dtype=np.float64)
        self.hs23 = np.array([o.hs23_per_core for o in offs], dtype=np.float64)
        self.rate = np.array([o.interruption_rate_per_hour for o in offs], dtype=np.float64)
        self.startup = np.array([o.startup_seconds / 3600.0 for o in offs], dtype=np.float64)
        self.walltime = np.array([o.max_walltime_hours or INF for o in offs], dtype=np.float64)
        self.capacity = np.array(
            [INF if o.capacity_units is None else float(o.capacity_units) for o in offs], dtype=np.float64
        )
        now = constraints.now
        self.node_hours = np.array(
            [usable_node_hours(o, now, constraints.horizon_hours) for o in offs], dtype=np.float64
        )
        self.is_allocation = np.array([o.allocation is not None for o in offs], dtype=bool)
        self.hours_to_end = np.array(
            [
                INF
                if o.allocation is None or now is None
                else (o.allocation.ends - now).total_seconds() / 3600
                for o in offs
            ],
            dtype=np.float64,
        )
        self.not_started = np.array(
            [o.allocation is not None and now is not None and o.allocation.starts > now for o in offs],
            dtype=bool,
        )
        self.unavailable = np.array([o.id in constraints.unavailable_offerings for o in offs], dtype=bool)
        self.hour_value = np.array(
            [float(constraints.allocation_hour_value.get(o.id, 0)) for o in offs], dtype=np.float64
        )
        self.region_tiers: dict[str, tuple[EgressTier, ...]] = {}
        for o in offs:
            if o.egress_tiers:
                self.region_tiers.setdefault(o.location, o.egress_tiers)
        self.routes = {(r.source, r.destination): r.tiers for r in constraints.egress_routes}

    def __len__(self) -> int:
        return len(self.offerings)

    def tiers(self, source: str, destination: str) -> tuple[EgressTier, ...] | None:
        """The tier table billing data moved from `source` to `destination` (None: free)."""
        if source == destination:
            return None
        found = self.routes.get((source, destination)) or self.routes.get((source, "*"))
        if found is None:
            found = self.region_tiers.get(source)
        return found or None


@dataclass(frozen=True, slots=True)
class Economics:
    """A group on the offerings `idx`: packing, run time and money per unit-wave and per unit started."""

    idx: Ints
    k: Ints  # jobs per unit at once
    waves: Ints  # W
    run_hours: Floats
    wave_hours: Floats
    money_wave: Floats  # USD per unit-wave
    money_start: Floats  # USD per unit started
    value_wave: Floats  # allocation value (USD) per unit-wave
    value_start: Floats


def fits_per_unit(group: DemandGroup, cat: Catalog) -> Ints:
    k = cat.cores // max(1, group.cores_per_job)
    if group.memory_gb_per_job > 0:
        k = np.minimum(k, np.floor(cat.memory / group.memory_gb_per_job + 1e-12).astype(np.int64))
    if group.gpus_per_job > 0:
        k = np.minimum(k, cat.gpus // group.gpus_per_job)
    return np.maximum(k, 0)


def window_hours(group: DemandGroup, constraints: PlanningConstraints) -> float:
    if group.deadline is None or constraints.now is None:
        return constraints.horizon_hours
    left = (group.deadline - constraints.now).total_seconds() / 3600.0
    return max(0.0, min(constraints.horizon_hours, left))


def compatible(group: DemandGroup, cat: Catalog, constraints: PlanningConstraints) -> Bools:
    """Offerings that may run the group's jobs at all (limits on amounts are the solver's rows)."""
    lim = constraints.experiments.get(group.experiment) or ExperimentLimits(group.experiment)
    ok = ~cat.unavailable
    if lim.allowed_backends is not None:
        ok &= np.isin(cat.backend, list(lim.allowed_backends))
    if lim.allowed_markets is not None:
        ok &= np.isin(cat.market, [m.value for m in lim.allowed_markets])
    if not group.preemptible:
        ok &= cat.market != Market.BACKFILL.value
    archs = group.archs if lim.allowed_archs is None else group.archs & lim.allowed_archs
    ok &= np.isin(cat.arch, [a.value for a in archs])
    if group.gpus_per_job > 0:
        ok &= cat.gpus >= group.gpus_per_job
        if group.gpu_model is not None:
            ok &= cat.gpu_model == group.gpu_model
    if lim.allowed_gpu_models is not None:
        ok &= (cat.gpus == 0) | np.isin(cat.gpu_model, list(lim.allowed_gpu_models))
    ok &= fits_per_unit(group, cat) >= 1
    run = group.walltime_hours * group.reference_hs23_per_core / cat.hs23
    ok &= run <= cat.walltime * (1 + 1e-12)
    ok &= run <= cat.hours_to_end
    ok &= ~cat.not_started
    if group.deadline is not None and constraints.now is not None:
        ok &= run <= (group.deadline - constraints.now).total_seconds() / 3600.0
    return np.asarray(ok, dtype=bool)


def economics(group: DemandGroup, idx: Ints, cat: Catalog, constraints: PlanningConstraints) -> Economics:
    run = group.walltime_hours * group.reference_hs23_per_core / cat.hs23[idx]
    lam_t = np.minimum(cat.rate[idx] * run, 50.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        stretch = np.where(
            lam_t > 1e-12, np.expm1(lam_t) / np.where(lam_t > 1e-12, lam_t, 1.0), 1.0 + lam_t / 2
        )
    wave = run * stretch
    waves = np.maximum(1, np.floor(window_hours(group, constraints) / wave + 1e-12)).astype(np.int64)
    price, value = cat.price[idx], cat.hour_value[idx]
    return Economics(
        idx=idx,
        k=fits_per_unit(group, cat)[idx],
        waves=waves,
        run_hours=run,
        wave_hours=wave,
        money_wave=price * wave,
        money_start=price * cat.startup[idx],
        value_wave=value * wave,
        value_start=value * cat.startup[idx],
    )


def egress_per_job(group: DemandGroup, location: str, cat: Catalog) -> list[tuple[str, float]]:
    """(billed source, GB) per job of the group run at `location`: input out of the data's home, output back."""
    src = group.data_location
    if src is None or src == location:
        return []
    out = []
    if group.input_gb_per_job > 0 and cat.tiers(src, location):
        out.append((src, group.input_gb_per_job))
    if group.output_gb_per_job > 0 and cat.tiers(location, src):
        out.append((location, group.output_gb_per_job))
    return out


def crossing_gb_per_job(group: DemandGroup, location: str) -> float:
    """GB per job crossing locations, billed or not: what an egress cap counts."""
    if group.data_location is None or group.data_location == location:
        return 0.0
    return group.input_gb_per_job + group.output_gb_per_job


def source_table(cat: Catalog, source: str, destinations: Sequence[str]) -> tuple[EgressTier, ...]:
    """The one tier table billing `source` towards `destinations`; two different ones are not modelled."""
    tables = {t for d in destinations if (t := cat.tiers(source, d))}
    if len(tables) != 1:
        raise NotImplementedError(
            f"egress out of {source}: {len(tables)} tier tables; the reference needs one"
        )
    return tables.pop()

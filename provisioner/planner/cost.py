"""THE planner objective: the cost of one HS23-hour of useful work for a demand group on each offering.

Prices here (`Offering.price_per_hour`, in settle/explain/columns too) are the offerings' quoted
prices: estimates for choosing, never money spent. Money spent is `accounting.billing`'s (the price in
force over each billed interval); the running fleet's spend rate reaches the planner at the price in
force through `FleetUnit.price_per_hour` (`Store.prices_in_force`).

Everything the planner trades off is priced in USD per HS23-hour of useful work, where a job's
work is `cores_per_job × walltime_hours × reference_hs23_per_core` whatever it runs on. For a
group on an offering (all of it vectorised over the catalog):

* packing: jobs_per_unit = floor(min(cores/cores_per_job, memory/memory_per_job, gpus/gpus_per_job)).
  A unit is paid whole, so cores left empty by packing count against the offering.
* run time: a job takes T = walltime × reference_hs23_per_core / hs23_per_core hours (faster cores finish sooner).
* compute = price_per_hour × T / (jobs_per_unit × work_per_job) = price / (used cores × hs23_per_core).
* interruption (spot, backfill): interrupted work restarts from scratch. With interruptions at
  Poisson rate λ per hour, the expected wall time to finish a T-hour job is (e^{λT} − 1)/λ, so every
  wave of jobs costs F = (e^{λT} − 1)/(λT) times as much (≈ 1 + λT/2 for small λT: on average half a
  job is lost per interruption). The interruption component is (price + allocation value) × T × (F − 1) / work.
* allocation value: an HPC allocation node-hour is not billed but is worth
  `constraints.allocation_hour_value[offering.id]` USD (0 when it would expire unused), per node-hour used.
* start-up: `startup_seconds` of paid idle per unit, amortised over the unit's run; a unit runs
  W = max(1, floor(window / (T × F))) successive waves of jobs within the window: the planning
  horizon, or the time to the group's deadline if that is sooner.
* egress: input GB from `group.data_location` to the offering's location and output GB back,
  each priced with MARGINAL tiers (each GB at its tier's rate) starting from the GB already moved
  from that source this period (`constraints.egress_used_gb`); same location is free. Routes come
  from `constraints.egress_routes` (exact destination first, then "*"), then the offering region's
  internet egress tiers for data leaving a cloud region, else free. For ranking and solving, each
  (group, offering) pair uses the average marginal rate of moving the group's whole volume; the
  plan's items are then re-priced exactly in Decimal, with volumes accumulated across groups.
  Budget rows count egress at the highest marginal rate the source can still meet this period
  (`egress_budget_usd_per_job`): other groups leaving the same source move where a group starts on
  the tiers, so its own average rate could under-estimate the money.

Money (what budgets and spend-rate caps count) is compute + interruption + start-up + egress; the
objective adds the allocation value. The per-unit quantities the solver needs are in `GroupCosts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from provisioner.domain import DemandGroup, EgressRoute, EgressTier, Market, PlanningConstraints
from provisioner.planner.columns import MARKETS, BoolArray, FloatArray, IntArray, OfferingColumns
from provisioner.planner.numerics import expm1

MAX_INTERRUPTION_EXPONENT = 50.0  # beyond λT = 50 the work effectively never finishes


def marginal_egress_cost_float(gb: float, already_used_gb: float, tiers: Sequence[EgressTier]) -> float:
    """`policies.egress.marginal_egress_cost` in plain floats (a scalar loop beats numpy here), for ranking."""
    if gb <= 0 or not tiers:
        return 0.0
    total, lower = 0.0, 0.0
    start, end = already_used_gb, already_used_gb + gb
    last = len(tiers) - 1
    for k, tier in enumerate(tiers):
        upper = float("inf") if tier.up_to_gb is None or k == last else tier.up_to_gb
        overlap = min(end, upper) - max(start, lower)
        if overlap > 0:
            total += overlap * float(tier.usd_per_gb)
        if upper >= end:
            break
        lower = upper
    return total


@dataclass(frozen=True, slots=True)
class RoutesFrom:
    """Tier tables from one data location: `in_set[loc]` indexes `in_tiers` (data going to loc),
    `out_set[loc]` indexes `out_tiers` (results coming back from loc, with the table's source)."""

    in_tiers: list[tuple[EgressTier, ...] | None]
    out_tiers: list[tuple[tuple[EgressTier, ...] | None, str]]
    in_set: IntArray
    out_set: IntArray
    away: BoolArray


class EgressPricer:
    """Finds the tiers for moving data between two locations and prices volumes on them."""

    def __init__(
        self,
        routes: Iterable[EgressRoute],
        region_tiers: Mapping[str, tuple[EgressTier, ...]],
        used_gb: Mapping[str, float],
    ) -> None:
        self._routes = {(r.source, r.destination): r.tiers for r in routes}
        self._region_tiers = region_tiers
        self.used_gb = used_gb
        self._memo: dict[tuple[int, float, float], float] = {}
        self._canonical: dict[tuple[EgressTier, ...], tuple[EgressTier, ...]] = {}
        self._routes_from: dict[str, RoutesFrom] = {}

    def tiers(self, source: str, destination: str) -> tuple[EgressTier, ...] | None:
        """None means the transfer is free (same place, or nothing bills it)."""
        if source == destination:
            return None
        found = self._routes.get((source, destination))
        if found is None:
            found = self._routes.get((source, "*"))
        if found is None:
            found = self._region_tiers.get(source)
        return found or None

    def routes_from(self, source: str, locations: tuple[str, ...]) -> RoutesFrom:
        """For data at `source`: which tier table applies into and back from every location."""
        found = self._routes_from.get(source)
        if found is None:
            in_index: dict[int, int] = {}
            in_tiers: list[tuple[EgressTier, ...] | None] = []
            out_index: dict[tuple[int, float], int] = {}
            out_tiers: list[tuple[tuple[EgressTier, ...] | None, str]] = []
            in_set, out_set = [], []
            for place in locations:
                t_in = self._canonical_tiers(source, place)
                k = in_index.setdefault(id(t_in), len(in_tiers))
                if k == len(in_tiers):
                    in_tiers.append(t_in)
                t_out = self._canonical_tiers(place, source)
                k_out = out_index.setdefault((id(t_out), self.used_gb.get(place, 0.0)), len(out_tiers))
                if k_out == len(out_tiers):
                    out_tiers.append((t_out, place))
                in_set.append(k)
                out_set.append(k_out)
            found = RoutesFrom(
                in_tiers=in_tiers,
                out_tiers=out_tiers,
                in_set=np.asarray(in_set, dtype=np.int64),
                out_set=np.asarray(out_set, dtype=np.int64),
                away=np.asarray([place != source for place in locations], dtype=bool),
            )
            self._routes_from[source] = found
        return found

    def _canonical_tiers(self, source: str, destination: str) -> tuple[EgressTier, ...] | None:
        tiers = self.tiers(source, destination)
        return self._canonical.setdefault(tiers, tiers) if tiers else None

    def top_rate(self, tiers: tuple[EgressTier, ...] | None, source: str) -> float:
        """The highest marginal USD per GB any further transfer out of `source` can meet this period.

        Budget rows price egress at this rate: other groups leaving the same source move the starting
        point along the tiers, so the group's own average rate could under-estimate its money."""
        return self._reachable(tiers, source, max, -1.0)

    def floor_rate(self, tiers: tuple[EgressTier, ...] | None, source: str) -> float:
        """The lowest marginal USD per GB any further transfer out of `source` can meet this period:
        whoever else moves data from it, no GB of this one costs less (what a lower bound may count)."""
        return self._reachable(tiers, source, min, -2.0)

    def _reachable(
        self,
        tiers: tuple[EgressTier, ...] | None,
        source: str,
        pick: Callable[[Iterable[float]], float],
        memo_tag: float,
    ) -> float:
        """`pick` of the marginal rates of the tiers not used up this period (0 without tiers)."""
        if not tiers:
            return 0.0
        used = self.used_gb.get(source, 0.0)
        key = (id(tiers), used, memo_tag)
        found = self._memo.get(key)
        if found is not None:
            return found
        last = len(tiers) - 1
        rates = [
            float(tier.usd_per_gb)
            for k, tier in enumerate(tiers)
            if (float("inf") if tier.up_to_gb is None or k == last else tier.up_to_gb) > used
        ]
        found = pick(rates) if rates else 0.0
        self._memo[key] = found
        return found

    def rate(self, tiers: tuple[EgressTier, ...] | None, source: str, gb: float) -> float:
        """Average USD per GB of moving `gb` out of `source` on `tiers`, after this period's use."""
        if not tiers or gb <= 0:
            return 0.0
        used = self.used_gb.get(source, 0.0)
        key = (id(tiers), used, gb)
        found = self._memo.get(key)
        if found is None:
            found = marginal_egress_cost_float(gb, used, tiers) / gb
            self._memo[key] = found
        return found


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Per-round inputs that do not depend on the group, prepared once."""

    horizon_hours: float
    now_ts: float | None
    allocation_value: FloatArray  # USD per node-hour, per offering
    is_allocation: BoolArray
    unavailable: BoolArray  # circuit breaker open
    paid: FloatArray  # price + allocation value, USD per unit-hour
    egress: EgressPricer
    valued: IntArray  # the offerings paying an allocation's value on top of their price

    def window_hours(self, group: DemandGroup) -> float:
        """How long a unit may run the group's jobs: the horizon, or less if the group has a deadline.

        A deadline sooner than the horizon means fewer successive waves per unit, so more units in
        parallel — how a burst request for N cores for a duration gets them at once.
        """
        if group.deadline is None or self.now_ts is None:
            return self.horizon_hours
        return max(0.0, min(self.horizon_hours, (group.deadline.timestamp() - self.now_ts) / 3600.0))

    @classmethod
    def build(cls, cols: OfferingColumns, constraints: PlanningConstraints) -> PlanContext:
        value = np.zeros(len(cols), dtype=np.float64)
        for offering_id, usd in constraints.allocation_hour_value.items():
            i = cols.index.get(offering_id)
            if i is not None:
                value[i] = float(usd)
        region_tiers: dict[str, tuple[EgressTier, ...]] = {}
        for o in cols.offerings:
            if o.egress_tiers:
                region_tiers.setdefault(o.location, o.egress_tiers)
        unavailable = np.zeros(len(cols), dtype=bool)
        for offering_id in constraints.unavailable_offerings:
            i = cols.index.get(offering_id)
            if i is not None:
                unavailable[i] = True
        return cls(
            paid=cols.price + value,
            unavailable=unavailable,
            horizon_hours=constraints.horizon_hours,
            now_ts=constraints.now.timestamp() if constraints.now else None,
            allocation_value=value,
            is_allocation=cols.market == MARKETS.index(Market.ALLOCATION),
            egress=EgressPricer(constraints.egress_routes, region_tiers, constraints.egress_used_gb),
            valued=np.flatnonzero(value > 0),
        )


def jobs_per_unit(group: DemandGroup, cols: OfferingColumns) -> IntArray:
    """How many of the group's jobs fit on one unit of each offering at once (0: none fit)."""
    fit = cols.cores // max(group.cores_per_job, 1)
    if group.memory_gb_per_job > 0:
        fit = np.minimum(fit, np.floor(cols.memory_gb / group.memory_gb_per_job).astype(np.int64))
    if group.gpus_per_job > 0:
        fit = np.minimum(fit, cols.gpu_count // group.gpus_per_job)
    return fit


def risk_factors(group: DemandGroup, cols: OfferingColumns) -> FloatArray:
    """The group's interruption factor per distinct (rate, HS23 per core) pair of `cols.risk`: elementwise
    maths, so gathered by `cols.risk.pair_of` (1 where that is −1) it has the same bits as computed on every
    offering."""
    work_hours = group.walltime_hours * group.reference_hs23_per_core
    with np.errstate(divide="ignore", invalid="ignore"):
        return interruption_factor(cols.risk.rate, work_hours / cols.risk.hs23_per_core)


def base_total(
    group: DemandGroup,
    jpu: IntArray,
    cols: OfferingColumns,
    ctx: PlanContext,
    factors: FloatArray | None = None,
    paid_per_fit: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Total cost per HS23-hour on every offering without egress (inf where no job fits), and the hours a
    wave of jobs takes (re-runs after interruptions included, T × F, as `group_costs`'s wave_hours) per
    profile of `cols.profiles` (`wave_hours[cols.profiles.of]`: per offering).

    It only depends on the job shape and run time, so groups differing in data or priority share it.
    Same maths as `group_costs`, rearranged: with P = price + allocation value,
    compute + allocation value + interruption = P × F / (jpu × cores × hs23_per_core) and
    start-up = P × startup_hours / (W × jpu × work_per_job). All but P / jpu depends on the offering only
    through its profile: computed per profile and gathered, the same bits as on every offering.
    `factors`: `risk_factors(group, cols)`, if the caller has them; `paid_per_fit`: `ctx.paid / jpu`, if
    the caller keeps it (it depends on the job's cores, memory and GPUs alone).
    """
    prof = cols.profiles
    with np.errstate(divide="ignore", invalid="ignore"):
        work_hours = group.walltime_hours * group.reference_hs23_per_core
        run_hours = work_hours / prof.hs23_per_core
        factor = np.ones(len(prof.pair))
        by_pair = risk_factors(group, cols) if factors is None else factors
        factor[prof.risky] = by_pair[prof.pair[prof.risky]]
        wave_hours = run_hours * factor
        waves = np.maximum(1.0, np.floor(ctx.window_hours(group) / wave_hours))
        per_job = factor / (max(group.cores_per_job, 1) * prof.hs23_per_core)
        per_job += prof.startup_hours / (waves * group.hs23_hours_per_job)
        total = (ctx.paid / jpu if paid_per_fit is None else paid_per_fit) * per_job[prof.of]
    total[jpu <= 0] = np.inf
    return total, wave_hours


def interruption_factor(rate_per_hour: FloatArray, hours: FloatArray) -> FloatArray:
    """Expected wall time to finish a `hours` job under restart-on-interruption, as a multiple of `hours`."""
    x = np.minimum(rate_per_hour * hours, MAX_INTERRUPTION_EXPONENT)
    out = 1.0 + x / 2.0
    risky = np.flatnonzero(x > 1e-12)  # most offerings are not interruptible: expm1 only where it counts
    if len(risky):
        at = x[risky]
        out[risky] = expm1(at) / at
    return out


FIELDS = (
    "offering",
    "jobs_per_unit",
    "run_hours",
    "wave_hours",
    "waves",
    "compute",
    "interruption",
    "allocation_value",
    "startup",
    "egress",
    "total",
    "egress_usd_per_job",
    "egress_gb_per_job",
    "egress_budget_usd_per_job",
)


class GroupCosts:
    """A group's economics on some offerings, one column per offering (`offering`: catalog index).

    Rows: offering, jobs_per_unit, run_hours (T), wave_hours (T × F, re-runs included), waves (W,
    per unit within the horizon), the cost components in USD per HS23-hour (compute, interruption,
    allocation_value, startup, egress) and their total (inf where no job fits), then egress USD and
    GB (crossing locations: what egress caps count) per job. One 2-D array, so that selecting
    offerings is one indexing operation.
    """

    __slots__ = ("data",)

    def __init__(self, data: FloatArray) -> None:
        self.data = data

    def __len__(self) -> int:
        return int(self.data.shape[1])

    def take(self, keep: IntArray | BoolArray) -> GroupCosts:
        return GroupCosts(self.data[:, keep])

    @staticmethod
    def concat(parts: Sequence[GroupCosts]) -> GroupCosts:
        return GroupCosts(np.concatenate([p.data for p in parts], axis=1))

    @property
    def offering(self) -> IntArray:
        return self.data[0].astype(np.int64)

    @property
    def jobs_per_unit(self) -> IntArray:
        return self.data[1].astype(np.int64)

    @property
    def run_hours(self) -> FloatArray:
        return self.data[2]

    @property
    def wave_hours(self) -> FloatArray:
        return self.data[3]

    @property
    def waves(self) -> IntArray:
        return self.data[4].astype(np.int64)

    @property
    def compute(self) -> FloatArray:
        return self.data[5]

    @property
    def interruption(self) -> FloatArray:
        return self.data[6]

    @property
    def allocation_value(self) -> FloatArray:
        return self.data[7]

    @property
    def startup(self) -> FloatArray:
        return self.data[8]

    @property
    def egress(self) -> FloatArray:
        return self.data[9]

    @property
    def total(self) -> FloatArray:
        return self.data[10]

    @property
    def egress_usd_per_job(self) -> FloatArray:
        return self.data[11]

    @property
    def egress_gb_per_job(self) -> FloatArray:
        return self.data[12]

    @property
    def egress_budget_usd_per_job(self) -> FloatArray:
        """Egress USD per job as budget rows count it: at the highest rate the source can still meet."""
        return self.data[13]


class GroupEgress:
    """Egress USD and GB per job of one group to each offering location (code into `cols.locations`)."""

    def __init__(self, group: DemandGroup, jobs: int, cols: OfferingColumns, ctx: PlanContext) -> None:
        source = group.data_location
        self.work = group.hs23_hours_per_job
        self.none = source is None or (group.input_gb_per_job <= 0 and group.output_gb_per_job <= 0)
        n = len(cols.locations)
        self.usd = np.zeros(n)
        self.gb = np.zeros(n)
        self.budget_usd = np.zeros(n)
        self.floor_usd = np.zeros(n)  # at the lowest rate any of its GB can cost (for lower bounds)
        if self.none or source is None:
            return
        routes = ctx.egress.routes_from(source, cols.locations)
        volume = max(jobs, 1)
        in_rate = np.array(
            [ctx.egress.rate(t, source, group.input_gb_per_job * volume) for t in routes.in_tiers]
        )
        out_rate = np.array(
            [ctx.egress.rate(t, loc, group.output_gb_per_job * volume) for t, loc in routes.out_tiers]
        )
        self.usd = (
            group.input_gb_per_job * in_rate[routes.in_set]
            + group.output_gb_per_job * out_rate[routes.out_set]
        )
        self.gb = np.where(routes.away, group.input_gb_per_job + group.output_gb_per_job, 0.0)
        in_top = np.array([ctx.egress.top_rate(t, source) for t in routes.in_tiers])
        out_top = np.array([ctx.egress.top_rate(t, loc) for t, loc in routes.out_tiers])
        self.budget_usd = (
            group.input_gb_per_job * in_top[routes.in_set] + group.output_gb_per_job * out_top[routes.out_set]
        )
        in_floor = np.array([ctx.egress.floor_rate(t, source) for t in routes.in_tiers])
        out_floor = np.array([ctx.egress.floor_rate(t, loc) for t, loc in routes.out_tiers])
        self.floor_usd = (
            group.input_gb_per_job * in_floor[routes.in_set]
            + group.output_gb_per_job * out_floor[routes.out_set]
        )

    def per_job(self, location: IntArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(USD, GB crossing locations, USD for budget rows) per job for offerings at these location codes."""
        return self.usd[location], self.gb[location], self.budget_usd[location]

    def usd_by_location(self) -> FloatArray:
        return self.usd


def group_costs(
    group: DemandGroup,
    idx: IntArray,
    jpu: IntArray,
    egress_of: GroupEgress | None,
    cols: OfferingColumns,
    ctx: PlanContext,
    factors: FloatArray | None = None,
) -> GroupCosts:
    """Price one HS23-hour of `group`'s work on the offerings `idx` (see the module docstring).

    `jpu` is `jobs_per_unit` over the whole catalog; `factors`: `risk_factors(group, cols)`, if the caller
    has them (gathered, the same bits as computing each offering's)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        run_hours = group.walltime_hours * group.reference_hs23_per_core / cols.hs23_per_core[idx]
        if factors is None:
            factor = interruption_factor(cols.interruption[idx], run_hours)
        else:
            factor = np.ones(len(idx))
            pair = cols.risk.pair_of[idx]
            risky = pair >= 0
            factor[risky] = factors[pair[risky]]
    work = group.hs23_hours_per_job
    egress = None if egress_of is None else egress_of.per_job(cols.location[idx])
    return _costs(idx, jpu[idx], run_hours, factor, work, ctx.window_hours(group), egress, cols, ctx)


def pair_costs(
    idx: IntArray,
    fit: IntArray,
    work_hours: FloatArray,
    factor: FloatArray,
    work: FloatArray,
    window: FloatArray,
    egress: tuple[FloatArray, FloatArray, FloatArray],
    cols: OfferingColumns,
    ctx: PlanContext,
) -> GroupCosts:
    """`group_costs` of (group, offering) pairs of any groups at once, the same numbers: per pair its
    offering, jobs per unit there, its group's run HS23-hours per core (walltime × reference HS23 per
    core), interruption factor there, HS23-hours per job and window, and egress USD, GB and budget USD
    per job there (the group's `GroupEgress.per_job`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        run_hours = work_hours / cols.hs23_per_core[idx]
    return _costs(idx, fit, run_hours, factor, work, window, egress, cols, ctx)


def _costs(
    idx: IntArray,
    fit: IntArray,
    run_hours: FloatArray,
    factor: FloatArray,
    work_per_job: float | FloatArray,
    window: float | FloatArray,
    egress: tuple[FloatArray, FloatArray, FloatArray] | None,
    cols: OfferingColumns,
    ctx: PlanContext,
) -> GroupCosts:
    """The cost rows of `GroupCosts` (elementwise maths: a group's figures may be scalars or per column)."""
    fits = fit > 0
    price = cols.price[idx]
    value = ctx.allocation_value[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        wave_hours = run_hours * factor
        waves = np.maximum(1.0, np.floor(window / wave_hours))
        work_per_wave = np.where(fits, fit * work_per_job, np.nan)
        paid = price + value
        compute = price * run_hours / work_per_wave
        interruption = paid * run_hours * (factor - 1.0) / work_per_wave
        allocation_value = value * run_hours / work_per_wave
        startup = paid * cols.startup_hours[idx] / (waves * work_per_wave)
    # written row by row into one preallocated array: stacking 14 small rows costs more than the maths
    data = np.empty((len(FIELDS), len(idx)), dtype=np.float64)
    if egress is None:
        data[11:14] = 0.0
    else:
        data[11], data[12], data[13] = egress
    if np.ndim(work_per_job) == 0:
        if work_per_job > 0:
            np.divide(data[11], work_per_job, out=data[9])
        else:
            data[9] = 0.0
    else:
        data[9] = 0.0
        np.divide(data[11], work_per_job, out=data[9], where=np.asarray(work_per_job) > 0)
    data[0], data[1], data[2], data[3], data[4] = idx, fit, run_hours, wave_hours, waves
    data[5], data[6], data[7], data[8] = compute, interruption, allocation_value, startup
    data[10] = np.where(fits, compute + interruption + allocation_value + startup + data[9], np.inf)
    return GroupCosts(data)

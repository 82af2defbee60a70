"""For every group: find the compatible offerings, price the promising ones, keep a shortlist for the solver and the explanation.

Pruning rule of the fast planner: per group, the `top_k` cheapest compatible offerings per
HS23-hour, taking at most `per_family` from one quota family, so that when the cheapest
family's quota, capacity or allocation binds the solver still sees the next-best families.
`top_k` is TOP_K, less in a round of so many groups that their shortlists would pass SHORTLIST_PAIRS
(`shortlist_size`). The exact MILP keeps every compatible offering (`top_k=None`). The shortlists are a
first guess: `pricing.py` then adds every offering the LP's duals say would improve the plan (column
generation).

Pricing 40,000 offerings for hundreds of groups: the cost without egress depends only on the
job shape and run time, so it is computed once per distinct (shape, run time) and shared; a group
adds its egress per location (one gather). The cheapest compatible offerings are then priced in
full (budget for one wave, egress cap, pacing, cost cap) in growing batches until the shortlist
is full — the same shortlist as pricing everything. The first batch (window) of a chunk of groups is
priced for all of them at once (`price_together`: the numbers of pricing each group's alone).
The explanation shortlist is the `explain_k` cheapest incompatible offerings with their reasons.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from provisioner.domain import DemandGroup
from provisioner.planner.columns import BoolArray, FloatArray, IntArray, OfferingColumns
from provisioner.planner.compatibility import CompatContext, ReasonArray
from provisioner.planner.cost import (
    FIELDS,
    GroupCosts,
    GroupEgress,
    PlanContext,
    base_total,
    group_costs,
    pair_costs,
    risk_factors,
)
from provisioner.planner.numerics import smallest, smallest_and_next

TOP_K = 12
PER_FAMILY = 3
# Where TOP_K per group would shortlist more pairs in a round than this, a group's shortlist is shorter,
# down to MIN_TOP_K (the offerings a group's shortlist gains where its data is and of the least spend rate
# come on top). Column generation makes the LP optimal over the whole catalog whatever the shortlists are;
# what they add is the rounding's alternatives, and what they cost is the LP's size, which at many groups
# takes the time (the first solve is the dearest step of pricing). On the 5,000-group instance of
# benchmarks/planner_scale.py, shortlists of 6 against 12 planned in 0.81x and 0.89x the time
# (`python -m benchmarks.planner_ab --base 20ca0c1`, two runs, 2026-12-04) and the plan served 0.0025 %
# less value at 0.03 % less cost (0.399 % short of the LP bound on value against 0.396 %); up to 2,500
# groups (the 720-group instance, every instance of benchmarks/planner_gap.py) shortlists keep TOP_K
SHORTLIST_PAIRS = 30_000
MIN_TOP_K = 6
EXPLAIN_K = 32
WINDOW = 256  # offerings priced per group at first
PREFIX = 4096  # cheapest offerings (without egress) kept per job shape


@dataclass(frozen=True, slots=True)
class GroupCandidates:
    group: DemandGroup
    demand: int  # pending jobs not already covered by the fleet
    solver: GroupCosts  # compatible offerings the solver may use, cheapest first
    rejected: GroupCosts  # cheapest incompatible offerings, for explanations
    rejected_reason: ReasonArray  # aligned with `rejected`
    compatible_count: int
    # its egress per location at `demand` (catalog pricing reads it too), None where it moves no data
    egress: GroupEgress | None = None
    # `packed_total(solver, demand)` where costing computed it (pricing merges columns by it), else None
    packed: FloatArray | None = field(default=None, compare=False)  # an array: no == of its own


def shortlist_size(groups: int) -> int:
    """Offerings per group's shortlist in a round costing `groups` groups: TOP_K, fewer where that would
    shortlist more than SHORTLIST_PAIRS pairs, never fewer than MIN_TOP_K."""
    return max(MIN_TOP_K, min(TOP_K, SHORTLIST_PAIRS // max(groups, 1)))


SPREAD_SCAN = 64  # shortlist positions `_spread_families` reads at first; each further read is 4× longer


def _spread_families(fam: IntArray, top_k: int, per_family: int) -> IntArray:
    """Positions in `fam` (the families of offerings sorted by cost) of the shortlist: cheapest first,
    ≤ per_family per family."""
    # the rank of an offering within its family depends only on the cheaper ones, so a plain loop stops at
    # the top_k-th kept; read in growing slices, as converting the whole array costs more than the loop
    keep: list[int] = []
    taken: dict[int, int] = {}
    start, step = 0, SPREAD_SCAN
    while start < len(fam) and top_k > 0:
        for pos, f in enumerate(fam[start : start + step].tolist(), start):
            count = taken.get(f, 0)
            if count < per_family:
                taken[f] = count + 1
                keep.append(pos)
                if len(keep) == top_k:
                    return np.array(keep, dtype=np.int64)
        start, step = start + step, 4 * step
    return np.array(keep, dtype=np.int64)


HOME_K = 4  # egress-free offerings kept per group whose data sits where offerings are
LIGHT_K = 3  # offerings kept per group for the least spend rate, when a spend-rate cap applies


def packed_total(costs: GroupCosts, demand: int | FloatArray) -> FloatArray:
    """Cost per HS23-hour of running `demand` jobs in whole unit-waves and whole units on each offering
    (`demand`: one group's, or per offering, each its group's: columns of several groups at once).

    Never below `costs.total` (full packing): a small group on a big unit pays for the empty slots."""
    k = np.maximum(costs.jobs_per_unit, 1).astype(np.float64)
    waves = np.maximum(costs.waves, 1).astype(np.float64)
    d = float(max(demand, 1)) if isinstance(demand, int) else np.maximum(demand, 1.0)
    wave_share = np.ceil(d / k) * k / d
    unit_share = np.ceil(d / (k * waves)) * k * waves / d
    per_wave = costs.compute + costs.interruption + costs.allocation_value
    with np.errstate(invalid="ignore"):
        out = per_wave * wave_share + costs.startup * unit_share + costs.egress
    return np.where(np.isfinite(costs.total), out, np.inf)


def _bound(priced: GroupCosts, more_left: bool) -> float:
    """The least full-packing cost of anything not priced yet (inf when everything was priced)."""
    if not more_left:
        return float("inf")
    finite = priced.total[np.isfinite(priced.total)]
    return float(finite.max()) if len(finite) else float("-inf")


def _select(
    usable: GroupCosts, packed: FloatArray, cols: OfferingColumns, top_k: int, per_family: int, bound: float
) -> tuple[GroupCosts, FloatArray, bool]:
    """The shortlist by packed cost at the group's size (`packed`: `packed_total` of `usable`), its packed
    costs, and whether it is exact (nothing unpriced beats it)."""
    order = np.argsort(packed, kind="stable")
    packed = packed[order]
    keep = _spread_families(cols.family[_offering(usable)[order]], top_k, per_family)
    exact = len(keep) == top_k and bool(packed[keep[-1]] <= bound)
    return usable.take(order[keep]), packed[keep], exact or bound == float("inf")


_Selected = tuple[GroupCosts, FloatArray, bool]


@dataclass(frozen=True, slots=True)
class _Side:
    """Several groups' columns side by side (`data`, group after group), and the matrix with a row per group
    that sorting them row by row uses: row g holds group g's columns, then padding."""

    data: FloatArray
    sizes: IntArray
    starts: IntArray  # group g's columns in `data` start here

    @classmethod
    def of(cls, parts: Sequence[FloatArray]) -> _Side:
        sizes = np.array([p.shape[1] for p in parts], dtype=np.int64)
        data = np.concatenate(parts, axis=1) if parts else np.zeros((len(FIELDS), 0))
        return cls(data, sizes, np.cumsum(sizes) - sizes)

    @property
    def width(self) -> int:
        return int(self.sizes.max()) if len(self.sizes) else 0

    def per_column(self, per_group: Sequence[float]) -> FloatArray:
        return np.repeat(np.array(per_group, dtype=np.float64), self.sizes)

    def filled(self) -> BoolArray:
        """Where the matrix holds a group's own column (not padding)."""
        return np.arange(self.width) < self.sizes[:, None]

    def matrix(self, values: FloatArray | IntArray, pad: float) -> FloatArray:
        """`values` (one per column of `data`) in the rows' matrix, `pad` after each group's own."""
        row = np.repeat(np.arange(len(self.sizes)), self.sizes)
        out = np.full((len(self.sizes), self.width), pad, dtype=np.float64)
        out[row, np.arange(len(row)) - self.starts[row]] = values
        return out

    def columns(self, order: IntArray) -> tuple[IntArray, BoolArray]:
        """The columns of `data` that the rows' sorted positions (`order`, each row a permutation of its
        matrix row) hold, and which are a group's own (the padding's are clipped into `data`: a group
        without columns, last, starts past them)."""
        real = order < self.sizes[:, None]
        at = np.minimum(self.starts[:, None] + np.where(real, order, 0), max(self.data.shape[1] - 1, 0))
        return at, real

    def split(self, at: IntArray, keep: BoolArray, packed: FloatArray) -> list[tuple[GroupCosts, FloatArray]]:
        """Per row, the columns `at` holds where `keep` is, in the row's order, with their packed costs."""
        rows, pos = np.nonzero(keep)  # row by row, each in its order
        chosen = at[rows, pos]
        data, costs = self.data[:, chosen], packed[chosen]
        kept = keep.sum(axis=1)
        ends = np.cumsum(kept)
        return [
            (GroupCosts(data[:, a:b]), costs[a:b])
            for a, b in zip((ends - kept).tolist(), ends.tolist(), strict=True)
        ]


def _spread_rows(family: IntArray, real: BoolArray, top_k: int, per_family: int) -> BoolArray:
    """`_spread_families` of every row at once (`family`: the offerings' families in each row's order,
    `real`: which are offerings, not padding): where the row keeps its offering."""
    width = family.shape[1]
    # rank within its family: rows sorted stably by family put each family's offerings together, in the
    # row's order; the rank is the distance to the start of its family's run
    family = np.where(real, family, -1)
    by_family = np.argsort(family, axis=1, kind="stable")
    grouped = np.take_along_axis(family, by_family, axis=1)
    position = np.broadcast_to(np.arange(width), grouped.shape)
    run = np.ones(grouped.shape, dtype=bool)
    run[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    rank = np.empty_like(by_family)
    np.put_along_axis(
        rank, by_family, position - np.maximum.accumulate(np.where(run, position, 0), axis=1), axis=1
    )
    eligible = real & (rank < per_family)
    return eligible & (np.cumsum(eligible, axis=1) <= top_k)


def _select_many(
    usables: Sequence[GroupCosts],
    demands: Sequence[int],
    bounds: Sequence[float],
    cols: OfferingColumns,
    top_k: int,
    per_family: int,
) -> list[_Selected]:
    """`[_select(u, packed_total(u, d), cols, top_k, per_family, b) for u, d, b in zip(...)]` in a few numpy
    calls for all groups: per group, its packed costs in a row of one matrix, each row sorted stably, then
    the family rule over the sorted rows. Costing a chunk group by group, these were a tenth of the
    5,000-group plan's costing (first windows, at most WINDOW wide; the walk's wider batches cost more side
    by side than one by one)."""
    side = _Side.of([u.data for u in usables])
    if side.width == 0 or top_k < 1:
        return [
            _select(u, packed_total(u, d), cols, top_k, per_family, b)
            for u, d, b in zip(usables, demands, bounds, strict=True)
        ]
    packed = packed_total(GroupCosts(side.data), side.per_column(demands))
    # stable per row: a row's own costs sort as `_select` sorts them, its padding (inf) after them (a NaN
    # of its own would sort after the padding: `real` skips the padding wherever it is)
    at, real = side.columns(np.argsort(side.matrix(packed, np.inf), axis=1, kind="stable"))
    keep = _spread_rows(cols.family[side.data[0, at].astype(np.int64)], real, top_k, per_family)
    found = side.split(at, keep, packed)
    kept = keep.sum(axis=1)
    last = np.array([float(p[-1]) if len(p) else np.nan for _, p in found])  # the last kept's packed cost
    bound = np.array(bounds, dtype=np.float64)
    exact = ((kept == top_k) & (last <= bound)) | (bound == np.inf)
    return [(costs, p, e) for (costs, p), e in zip(found, exact.tolist(), strict=True)]


def _light_many(
    priced: Sequence[GroupCosts], demands: Sequence[int], cols: OfferingColumns, per_family: int
) -> list[tuple[GroupCosts, FloatArray]]:
    """`_light` of several groups at once (every group with offerings priced)."""
    side = _Side.of([c.data for c in priced])
    costs = GroupCosts(side.data)
    demand = side.per_column(demands)
    units = np.ceil(
        np.maximum(demand, 1.0) / (np.maximum(costs.jobs_per_unit, 1) * np.maximum(costs.waves, 1))
    )
    packed = packed_total(costs, demand)
    offering = _offering(costs)
    # per row, the least USD per hour first, then the least packed cost, then the row's order (padding last)
    order = np.lexsort(
        (side.matrix(packed, np.inf), side.matrix(cols.price[offering] * units, np.inf), ~side.filled()),
        axis=1,
    )
    at, real = side.columns(order)
    return side.split(at, _spread_rows(cols.family[offering[at]], real, LIGHT_K, per_family), packed)


def _offering(costs: GroupCosts) -> IntArray:
    return costs.data[0].astype(np.int64)


def _home_offerings(
    group: DemandGroup, static: ReasonArray, base: _Base, egress: GroupEgress, shared: _Shared
) -> IntArray | None:
    """The cheapest allowed offerings where the group's data sits (egress-free: what an egress cap leaves
    usable), to price; None where there are none or the group moves no data."""
    if egress.none or group.data_location is None:
        return None
    return shared.home(static, base, group.data_location)


def _home(
    costs: GroupCosts, demand: int, cols: OfferingColumns, per_family: int
) -> tuple[GroupCosts, FloatArray]:
    """The cheapest of `_home_offerings` (priced, those the price rules allow) at the group's size."""
    chosen, packed, _ = _select(costs, packed_total(costs, demand), cols, HOME_K, per_family, float("inf"))
    return chosen, packed


def _light_offerings(demand: int, static: ReasonArray, base: _Base, shared: _Shared) -> IntArray | None:
    """The cheapest offerings for the job shape that serve the whole group for the least USD per hour
    (what a binding spend-rate cap leaves room for), to price; None where the rules allow none."""
    allowed = shared.light_index(static, base)
    if allowed is None:
        return None
    return base.prefix[allowed.least_rates(max(demand, 1), 8 * LIGHT_K)]


def _light(
    costs: GroupCosts, demand: int, cols: OfferingColumns, per_family: int
) -> tuple[GroupCosts, FloatArray] | None:
    """Of `_light_offerings` (priced, those the price rules allow), the least USD per hour first."""
    if len(costs) == 0:
        return None
    units = np.ceil(max(demand, 1) / (np.maximum(costs.jobs_per_unit, 1) * np.maximum(costs.waves, 1)))
    offering = _offering(costs)
    packed = packed_total(costs, demand)
    by_rate = np.lexsort((packed, cols.price[offering] * units))
    keep = by_rate[_spread_families(cols.family[offering[by_rate]], LIGHT_K, per_family)]
    return costs.take(keep), packed[keep]


def _merge_packed(
    shortlist: tuple[GroupCosts, FloatArray], extra: tuple[GroupCosts, FloatArray]
) -> tuple[GroupCosts, FloatArray]:
    """Both shortlists, each offering once, cheapest at the group's size first, with their packed costs
    (`packed_total` is per offering, so it merges too)."""
    (short, short_packed), (more, more_packed) = shortlist, extra
    # a dozen offerings against a dozen: one comparison matrix is cheaper than np.isin's sorting
    new = ~(_offering(more)[:, None] == _offering(short)[None, :]).any(axis=1)
    packed = np.concatenate((short_packed, more_packed[new]))
    order = np.argsort(packed, kind="stable")
    return GroupCosts(np.concatenate((short.data, more.data[:, new]), axis=1)[:, order]), packed[order]


@dataclass(frozen=True, slots=True)
class _Base:
    total: FloatArray  # cost per HS23-hour without egress, every offering
    prefix: IntArray  # the PREFIX offerings with the lowest `total`, cheapest first
    bound: float  # the lowest `total` outside the prefix
    prefix_price: FloatArray  # USD per unit-hour of the prefix's offerings
    prefix_slots: FloatArray  # jobs a unit runs within the window (jobs per unit × waves), ≥ 1
    prefix_total: FloatArray  # `total` of the prefix
    prefix_location: IntArray  # location codes of the prefix
    risk_factor: FloatArray  # the shape's interruption factor per pair of `cols.risk` (`risk_factors`)
    prefix_jpu: FloatArray  # jobs per unit on the prefix's offerings, at least 1
    valued_total: FloatArray  # `total` of the offerings paying an allocation's value (`PlanContext.valued`)
    thin: bool = False  # sent back by a worker without `total`, `prefix_price` and `prefix_slots` (empty)

    def thinned(self) -> _Base:
        """What catalog pricing reads of it, for another process: a quarter of its size on the full catalog
        (`total` alone is a float per offering; pricing reads beyond the prefix seldom, and asks
        `BaseCosts.full` for that)."""
        return replace(self, total=_NONE, prefix_price=_NONE, prefix_slots=_NONE, thin=True)


_NONE = np.zeros(0)


class BaseCosts:
    """Cost per HS23-hour without egress, per job shape and run time, cached for the round: costing and
    then catalog pricing (`pricing.py`) ask for the same shapes, so in one process they share it (on the
    720-group instance of benchmarks/planner_scale.py pricing asked for 111 shapes, all costed before)."""

    def __init__(self, cols: OfferingColumns, ctx: PlanContext) -> None:
        self.cols, self.ctx = cols, ctx
        self._cache: dict[tuple[object, ...], _Base] = {}
        # `ctx.paid / jpu` by the identity of `jpu` (kept alive beside it): one array per job's cores, memory
        # and GPUs (`CompatContext.shape`), shared by the shapes differing in run time
        self._paid: dict[int, tuple[IntArray, FloatArray]] = {}

    def entries(self) -> dict[tuple[object, ...], _Base]:
        """What is kept, by shape, thinned for catalog pricing in another process of the same round (`adopt`)."""
        return {key: base.thinned() for key, base in self._cache.items()}

    def adopt(self, entries: dict[tuple[object, ...], _Base]) -> None:
        """Keep shapes another process costed for the same round's columns and context (a shape's costs
        depend only on its key, so the same as costing them here), thin: for catalog pricing, not costing."""
        for key, base in entries.items():
            self._cache.setdefault(key, base)

    def full(self, group: DemandGroup, jpu: IntArray) -> _Base:
        """`get`, with every field even where a worker sent the shape back thin (costed again here, once)."""
        found = self.get(group, jpu)
        if found.thin:
            del self._cache[self._key(group)]
            found = self.get(group, jpu)
        return found

    def _key(self, group: DemandGroup) -> tuple[object, ...]:
        return (
            group.cores_per_job,
            group.memory_gb_per_job,
            group.gpus_per_job,
            group.walltime_hours * group.reference_hs23_per_core,
            group.hs23_hours_per_job,
            self.ctx.window_hours(group),
        )

    def _paid_per_fit(self, jpu: IntArray) -> FloatArray:
        found = self._paid.get(id(jpu))
        if found is None:
            with np.errstate(divide="ignore", invalid="ignore"):
                found = self._paid[id(jpu)] = (jpu, self.ctx.paid / jpu)
        return found[1]

    def get(self, group: DemandGroup, jpu: IntArray) -> _Base:
        """The shape's costs; thin where a worker sent them back (what catalog pricing reads, see `full`)."""
        key = self._key(group)
        found = self._cache.get(key)
        if found is None:
            factors = risk_factors(group, self.cols)
            total, wave_hours = base_total(group, jpu, self.cols, self.ctx, factors, self._paid_per_fit(jpu))
            if len(total) > PREFIX:
                prefix, bound = smallest_and_next(total, PREFIX)
            else:
                prefix, bound = np.argsort(total, kind="stable"), float("inf")
            wave = wave_hours[self.cols.profiles.of[prefix]]
            waves = np.maximum(1.0, np.floor(self.ctx.window_hours(group) / np.maximum(wave, 1e-12)))
            fit = np.maximum(jpu[prefix], 1).astype(np.float64)
            slots = fit * waves
            found = _Base(
                total,
                prefix,
                bound,
                self.cols.price[prefix],
                slots,
                total[prefix],
                self.cols.location[prefix],
                factors,
                fit,
                total[self.ctx.valued],
            )
            self._cache[key] = found
        return found


class _GroupPricer:
    """Prices offerings for one group and keeps those its price rules allow. A column of `group_costs` and
    of `priced_reasons` depends only on its offering, so offerings of the group's first window (`remember`)
    are taken from it rather than priced again (`known`): `_light` and `_home` mostly ask for those."""

    def __init__(
        self,
        group: DemandGroup,
        jpu: IntArray,
        egress: GroupEgress,
        cols: OfferingColumns,
        ctx: PlanContext,
        compat: CompatContext,
        factors: FloatArray,
    ) -> None:
        """`factors`: the group's `risk_factors`."""
        self.group, self.jpu, self.egress, self.cols, self.ctx, self.compat = (
            group,
            jpu,
            egress,
            cols,
            ctx,
            compat,
        )
        self.factors = factors
        self._costs: GroupCosts | None = None
        self._reasons: ReasonArray = np.zeros(0, dtype=np.uint8)
        self._by_offering: IntArray = np.zeros(0, dtype=np.int64)  # positions in `_costs`, by offering
        self._offerings: IntArray = np.zeros(0, dtype=np.int64)  # sorted

    def price(self, idx: IntArray) -> GroupCosts:
        return group_costs(self.group, idx, self.jpu, self.egress, self.cols, self.ctx, self.factors)

    def reasons(self, costs: GroupCosts) -> ReasonArray:
        return self.compat.priced_reasons(self.group, costs)

    def remember(self, idx: IntArray, costs: GroupCosts, reasons: ReasonArray) -> None:
        """`costs` = `price(idx)` (distinct offerings) and `reasons` = `reasons(costs)`, for reuse."""
        self._costs, self._reasons = costs, reasons
        self._by_offering = np.argsort(idx)
        self._offerings = idx[self._by_offering]

    def known(self, idx: IntArray) -> GroupCosts | None:
        """`price(idx)` without the offerings the price rules reject, when all of `idx` were remembered
        (else None: the caller prices them, `price_together`)."""
        if self._costs is not None and len(self._offerings):
            at = np.minimum(np.searchsorted(self._offerings, idx), len(self._offerings) - 1)
            if bool((self._offerings[at] == idx).all()):  # all priced already
                pos = self._by_offering[at]
                return self._costs.take(pos[self._reasons[pos] == 0])
        return None


@dataclass(frozen=True, slots=True)
class _RateIndex:
    """A shape's cheapest offerings the rules allow (`pos`: positions in its prefix, ascending), with their
    USD per unit-hour and the jobs a unit runs in the window, for the least USD per hour of running a group
    whole (price × ⌈jobs / slots⌉). Computed for every one of them: bounding the rate by sorted prices and
    price per slot computed it for fewer, but sorting them for each of the 779 shape and rule-set pairs of
    the 5,000-group instance of benchmarks/planner_scale.py cost more than it saved (costing in one process,
    4 runs: 0.27-0.30 s computing every rate against 0.70-0.85 s with the bounds, of 5.7-7.0 s of CPU time,
    2026-12-03)."""

    pos: IntArray
    price: FloatArray
    slots: FloatArray

    def least_rates(self, jobs: int, take: int) -> IntArray:
        """The positions of the `take` least rates for `jobs` jobs, least first, equal rates by position."""
        return self.pos[smallest(self.price * np.ceil(jobs / self.slots), take)]


# a batch of the walk: the usable offerings of the batch priced, the least full-packing cost of what is
# left unpriced (`_bound`), and how many offerings the batch priced
_Batch = tuple[GroupCosts, float, int]


class _Shared:
    """Per-group selections that depend only on objects cached for the round (a rule set's reasons, a job
    shape's `_Base`), so the groups sharing them compute them once. Keyed by identity; the values keep
    the keys' objects alive, so an identity is never reused within the round."""

    def __init__(self, locations: dict[str, IntArray], location: IntArray) -> None:
        self._locations = locations
        self._location = location
        self._allowed: dict[tuple[int, int], tuple[ReasonArray, _Base, _RateIndex | None]] = {}
        self._home: dict[tuple[int, int, str], tuple[ReasonArray, _Base, IntArray | None]] = {}
        self._first: dict[int, tuple[_Base, IntArray | None]] = {}
        self._every: dict[tuple[int, int], tuple[ReasonArray, _Base, IntArray, FloatArray, IntArray]] = {}
        self._windows: dict[tuple[int, int, object], tuple[ReasonArray, _Base, _FirstWindow]] = {}
        self._batches: dict[tuple[int, int, object, int], tuple[ReasonArray, _Base, _Batch]] = {}

    def window(self, static: ReasonArray, base: _Base, cost_cap: object) -> _FirstWindow | None:
        """The first window kept for this rule set, job shape and cost cap: for a group without egress
        nothing else changes its costs, price rules or explanation (its pricer, then shared, prices for
        every group of the key alike)."""
        found = self._windows.get((id(static), id(base), cost_cap))
        return None if found is None else found[2]

    def keep_window(self, static: ReasonArray, base: _Base, cost_cap: object, window: _FirstWindow) -> None:
        self._windows[(id(static), id(base), cost_cap)] = (static, base, window)

    def batch(self, static: ReasonArray, base: _Base, cost_cap: object, size: int) -> _Batch | None:
        """A batch of the walk over every allowed offering, kept as `window` keeps the first window."""
        found = self._batches.get((id(static), id(base), cost_cap, size))
        return None if found is None else found[2]

    def keep_batch(
        self, static: ReasonArray, base: _Base, cost_cap: object, size: int, walked: _Batch
    ) -> None:
        self._batches[(id(static), id(base), cost_cap, size)] = (static, base, walked)

    def allowed(self, static: ReasonArray, base: _Base) -> tuple[IntArray, FloatArray, IntArray]:
        """Every offering the rules allow, with its cost without egress and its location code."""
        key = (id(static), id(base))
        found = self._every.get(key)
        if found is None:
            every = np.flatnonzero(static == 0)
            found = (static, base, every, base.total[every], self._location[every])
            self._every[key] = found
        return found[2], found[3], found[4]

    def light_index(self, static: ReasonArray, base: _Base) -> _RateIndex | None:
        """The shape's cheapest offerings the rules allow, indexed for `_light` (None: none allowed)."""
        key = (id(static), id(base))
        found = self._allowed.get(key)
        if found is None:
            pos = np.flatnonzero(static[base.prefix] == 0)
            index = _RateIndex(pos, base.prefix_price[pos], base.prefix_slots[pos]) if len(pos) else None
            found = (static, base, index)
            self._allowed[key] = found
        return found[2]

    def home(self, static: ReasonArray, base: _Base, location: str) -> IntArray | None:
        """The allowed offerings at `location` with the lowest cost without egress (egress-free there)."""
        key = (id(static), id(base), location)
        found = self._home.get(key)
        if found is None:
            here = self._locations.get(location)
            idx = None
            if here is not None:
                here = here[static[here] == 0]
                idx = _cheapest(base.total, here, 8 * HOME_K) if len(here) else None
            found = (static, base, idx)
            self._home[key] = found
        return found[2]

    def first_without_egress(self, base: _Base) -> IntArray | None:
        """`_window` for a group without egress: the same for every group of the shape."""
        found = self._first.get(id(base))
        if found is None:
            found = (base, _window(base, base.prefix_total))
            self._first[id(base)] = found
        return found[1]


def _window(base: _Base, pre_total: FloatArray) -> IntArray | None:
    """The WINDOW offerings of the prefix with the lowest `pre_total` (the prefix's cost per HS23-hour with
    the group's egress), cheapest first; None if something outside the prefix might be cheaper."""
    sel, exact = _prefix_window(base, pre_total)
    return base.prefix[sel] if exact else None


def _prefix_window(base: _Base, pre_total: FloatArray) -> tuple[IntArray, bool]:
    """`_window`'s positions in the prefix, and whether nothing outside the prefix is cheaper."""
    pre = base.prefix
    sel = smallest(pre_total, WINDOW) if len(pre) > WINDOW else np.arange(len(pre))
    sel = sel[np.argsort(pre_total[sel], kind="stable")]
    return sel, bool(len(sel) and pre_total[sel[-1]] <= base.bound)


def _egress_window(base: _Base, egress: GroupEgress, cols: OfferingColumns) -> IntArray:
    """`_cheapest(_full_total(base, egress, cols), every offering, WINDOW)` for a group with egress, from the
    prefix where it can be. Where it cannot, only offerings costing at most the prefix's WINDOW-th cheapest
    with egress are priced with it: the answer's last costs no more. Egress is per location, so an offering
    costing more before egress than the limit less its location's egress is dearer after; those within a
    hair of it (float rounding) are priced too (the same window as pricing all 40,000: on the 5,000-group
    instance of benchmarks/planner_scale.py, 900 offerings priced a group instead of 21,800 below the limit
    before egress)."""
    pre_total = base.prefix_total + egress.usd[base.prefix_location] / egress.work
    sel, exact = _prefix_window(base, pre_total)
    if exact:
        return base.prefix[sel]
    limit = float(pre_total[sel[-1]]) if len(sel) else np.nan
    if np.isnan(limit):
        near = np.arange(len(base.total))
    elif np.isinf(limit):
        near = np.flatnonzero(base.total <= limit)
    else:
        added = egress.usd / egress.work  # per location
        room = limit - added + 1e-9 * (abs(limit) + np.abs(added))
        near = np.flatnonzero(base.total <= room[cols.location])
    return _cheapest_of(base.total[near] + egress.usd[cols.location[near]] / egress.work, near, WINDOW)


def _prefix_cheapest(base: _Base, pos: IntArray, egress: GroupEgress | None, k: int) -> IntArray | None:
    """`_cheapest_of(_full_total(...) of the allowed offerings, the allowed offerings, k)` from the prefix's
    allowed positions `pos`, when it holds them (None when it may not): the k least costs per HS23-hour with
    egress, equal costs in catalog order. Outside the prefix the cost without egress is at least
    `base.bound`, and egress costs nothing less than nothing, so a k-th least below it is the same there."""
    if len(pos) <= k:
        return None
    cost = base.prefix_total[pos]
    if egress is not None:
        cost = cost + egress.usd[base.prefix_location[pos]] / egress.work
    kth = np.partition(cost, k - 1)[k - 1]
    if not kth < base.bound:
        return None
    near = np.flatnonzero(cost <= kth)
    idx = base.prefix[pos[near]]
    return idx[np.lexsort((idx, cost[near]))[:k]]


def _full_total(base: _Base, egress: GroupEgress, cols: OfferingColumns) -> FloatArray:
    """Cost per HS23-hour on every offering, egress included."""
    if egress.none or egress.work <= 0:
        return base.total
    return base.total + egress.usd[cols.location] / egress.work


def _cheapest(values: FloatArray, idx: IntArray, k: int) -> IntArray:
    """The k entries of `idx` with the smallest `values`, cheapest first."""
    return _cheapest_of(values[idx], idx, k)


def _cheapest_of(values: FloatArray, idx: IntArray, k: int) -> IntArray:
    """`_cheapest` given `values[idx]`."""
    if len(idx) > k:
        part = smallest(values, k)
        idx, values = idx[part], values[part]
    return idx[np.argsort(values, kind="stable")]


@dataclass(frozen=True, slots=True)
class _FirstWindow:
    """A group's first offerings priced (the cheapest WINDOW, or all for the exact MILP), with what the
    explanation shows of those it rejects."""

    first: IntArray
    pricer: _GroupPricer  # remembers `priced`
    priced: GroupCosts
    usable: GroupCosts  # of `priced`, those compatible and allowed by the price rules
    compatible: int  # offerings of `first` compatible before pricing
    rejected: GroupCosts  # the cheapest incompatible offerings
    rejected_reason: ReasonArray


def _price_first(
    first: IntArray,
    pricer: _GroupPricer,
    priced: GroupCosts,
    priced_reason: ReasonArray,
    static: ReasonArray,
    base: _Base,
    cols: OfferingColumns,
    explain_k: int,
) -> _FirstWindow:
    """The first window from its prices (`priced` = `pricer.price(first)`, `priced_reason` their reasons)."""
    pricer.remember(first, priced, priced_reason)
    status = static[first]
    reason = np.where(status == 0, priced_reason, status)
    shown = np.flatnonzero((reason != 0) & np.isfinite(priced.total))[:explain_k]
    rejected, rejected_reason = priced.take(shown), reason[shown]
    if len(shown) < 5:  # hardly anything fits: also show the cheapest offerings lacking cores or memory
        none_fit = np.flatnonzero(~np.isfinite(base.total))
        extra = _cheapest(cols.price, none_fit, 5 - len(shown))
        rejected = GroupCosts.concat([rejected, pricer.price(extra)])
        rejected_reason = np.concatenate([rejected_reason, static[extra]])
    return _FirstWindow(
        first,
        pricer,
        priced,
        priced.take(reason == 0),
        int(np.count_nonzero(status == 0)),
        rejected,
        rejected_reason,
    )


# groups whose first windows are priced together (`price_together`), and the offerings they price at most (past
# which a chunk ends: the exact MILP's windows are the whole catalog): a few MB of costs at a time
CHUNK = 256
CHUNK_PAIRS = 65_536


@dataclass(frozen=True, slots=True)
class _Start:
    """A group's costing up to its first window: found (`window`), or to be priced (`first`, at `waiting` in
    its chunk's `pending`; a shared window another group of the chunk already waits for has no `first`)."""

    group: DemandGroup
    jobs: int
    jpu: IntArray
    static: ReasonArray
    egress: GroupEgress
    base: _Base
    with_egress: bool
    shareable: bool  # its first window is the same for every group of its rule set, job shape and cost cap
    window: _FirstWindow | None
    first: IntArray | None = None
    waiting: int = -1


@dataclass(frozen=True, slots=True)
class _Pending:
    """A first window to price: its group's start (with `first`) and the pricer that will remember it."""

    start: _Start
    pricer: _GroupPricer


def _start_of(
    group: DemandGroup,
    jobs: int,
    jpu: IntArray,
    static: ReasonArray,
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    bases: BaseCosts,
    shared: _Shared,
    top_k: int | None,
) -> _Start:
    """The group's egress and shape costs, and its first window where one is shared already."""
    egress = GroupEgress(group, jobs, cols, plan_ctx)
    base = bases.get(group, jpu)
    # without egress, the same for every group of the rule set, job shape and cost cap
    shareable = top_k is not None and egress.none
    window = shared.window(static, base, group.max_cost_per_hs23_hour) if shareable else None
    with_egress = not egress.none and group.hs23_hours_per_job > 0
    return _Start(group, jobs, jpu, static, egress, base, with_egress, shareable, window)


def _first(start: _Start, cols: OfferingColumns, shared: _Shared, top_k: int | None) -> IntArray:
    """The group's first offerings to price: the cheapest WINDOW, found within the shared prefix when
    possible (every offering for the exact MILP)."""
    base, egress = start.base, start.egress
    first = None
    if top_k is not None:
        first = _egress_window(base, egress, cols) if start.with_egress else shared.first_without_egress(base)
    if first is None:
        n = len(base.total)
        first = _cheapest(_full_total(base, egress, cols), np.arange(n), WINDOW if top_k is not None else n)
    return first


@dataclass(frozen=True, slots=True)
class PriceAsk:
    """Offerings to price for one group: its jobs per unit over the catalog, egress and `risk_factors`."""

    group: DemandGroup
    jpu: IntArray
    egress: GroupEgress
    factors: FloatArray
    offerings: IntArray


@dataclass(frozen=True, slots=True)
class PricedTogether:
    """`price_together`'s answer: every ask's columns one after another, the k-th ask's up to `ends[k]`."""

    costs: GroupCosts
    reasons: ReasonArray
    ends: list[int]

    def parts(self) -> list[tuple[GroupCosts, ReasonArray]]:
        """Each ask's costs and reasons, arrays of their own."""
        return [
            (GroupCosts(self.costs.data[:, a:b].copy()), self.reasons[a:b].copy())
            for a, b in zip([0, *self.ends][:-1], self.ends, strict=True)
        ]


def price_together(
    asked: Sequence[PriceAsk], cols: OfferingColumns, plan_ctx: PlanContext, compat: CompatContext
) -> PricedTogether:
    """Per ask, `group_costs` of its offerings and their `priced_reasons`: the same numbers, computed for
    all of them at once (`pair_costs`, `pair_priced_reasons`); costing's chunks and catalog pricing's picks
    (`pricing.py`) are priced so."""
    if not asked:
        return PricedTogether(GroupCosts(np.zeros((len(FIELDS), 0))), np.zeros(0, dtype=np.uint8), [])
    sizes = [len(ask.offerings) for ask in asked]
    idx = np.concatenate([ask.offerings for ask in asked])
    row = np.repeat(np.arange(len(asked)), sizes)
    loc = cols.location[idx]
    groups = [ask.group for ask in asked]

    def per_pair(values: list[float]) -> FloatArray:
        return np.array(values)[row]

    def per_place(name: str) -> FloatArray:  # a `GroupEgress` row per pair, at the pair's location
        by_group: FloatArray = np.stack([getattr(ask.egress, name) for ask in asked])
        return by_group[row, loc]

    factor = np.ones(len(idx))
    risk = cols.risk.pair_of[idx]
    risky = np.flatnonzero(risk >= 0)
    if len(risky):
        factor[risky] = np.stack([ask.factors for ask in asked])[row[risky], risk[risky]]
    costs = pair_costs(
        idx,
        np.concatenate([ask.jpu[ask.offerings] for ask in asked]),
        per_pair([g.walltime_hours * g.reference_hs23_per_core for g in groups]),
        factor,
        per_pair([g.hs23_hours_per_job for g in groups]),
        per_pair([plan_ctx.window_hours(g) for g in groups]),
        (per_place("usd"), per_place("gb"), per_place("budget_usd")),  # `GroupEgress.per_job`, in its order
        cols,
        plan_ctx,
    )
    caps = [
        float("inf") if g.max_cost_per_hs23_hour is None else float(g.max_cost_per_hs23_hour) for g in groups
    ]
    exp = np.array([compat.limits.exp_index[g.experiment] for g in groups], dtype=np.int64)[row]
    return PricedTogether(
        costs, compat.pair_priced_reasons(exp, per_pair(caps), costs), np.cumsum(sizes).tolist()
    )


def _ask(start: _Start, offerings: IntArray) -> PriceAsk:
    return PriceAsk(start.group, start.jpu, start.egress, start.base.risk_factor, offerings)


def _first_of(wait: _Pending) -> IntArray:
    first = wait.start.first
    assert first is not None  # a pending window's start has its first offerings
    return first


def _head(
    start: _Start,
    window: _FirstWindow,
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    compat: CompatContext,
    shared: _Shared,
    top_k: int | None,
    per_family: int,
    rate_capped: Callable[[str], bool],
) -> _Head:
    """The group's shortlist from its first window (walking on where the window cannot decide it), and the
    offerings where its data is and those of the least spend rate to merge in (`_finished`): costing one
    group alone (`build_candidates` does the same steps for a chunk of groups at once)."""
    if top_k is None:
        return _Head(start, window, window.compatible, (window.usable, None), None, None)
    usable, jobs = window.usable, start.jobs
    short = _select(usable, packed_total(usable, jobs), cols, top_k, per_family, _window_bound(start, window))
    compatible = window.compatible
    if not short[2]:
        short, compatible = _walk(start, short, 4 * WINDOW, cols, plan_ctx, compat, shared, top_k, per_family)
    return _headed(start, window, short, compatible, shared, rate_capped)


def _window_bound(start: _Start, window: _FirstWindow) -> float:
    """`_bound` of what the group's first window priced (inf when it priced every offering)."""
    return _bound(window.priced, len(window.first) < len(start.base.total))


def _heads_of(
    starts: Sequence[_Start],
    windows: Sequence[_FirstWindow],
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    compat: CompatContext,
    shared: _Shared,
    top_k: int | None,
    per_family: int,
    rate_capped: Callable[[str], bool],
) -> list[_Head]:
    """`[_head(start, window, ...) for start, window in zip(starts, windows)]` with the shortlists selected
    from the first windows for all the groups at once, and the walk's first batch priced for all the groups
    the first windows could not decide at once (group by group, the walk was a fifth of the 5,000-group
    plan's costing); its selection, and a walk going further, group by group."""
    if top_k is None:
        return [
            _head(start, window, cols, plan_ctx, compat, shared, top_k, per_family, rate_capped)
            for start, window in zip(starts, windows, strict=True)
        ]
    bounds: dict[int, float] = {}  # per window (groups share one): `_bound` of what it priced
    for start, window in zip(starts, windows, strict=True):
        if id(window) not in bounds:
            bounds[id(window)] = _window_bound(start, window)
    jobs = [start.jobs for start in starts]
    shorts = _select_many(
        [w.usable for w in windows], jobs, [bounds[id(w)] for w in windows], cols, top_k, per_family
    )
    compatible = [w.compatible for w in windows]
    walking = [k for k, short in enumerate(shorts) if not short[2]]
    batch = 4 * WINDOW
    walked: dict[int, _Batch] = {}
    asks: list[tuple[int, IntArray]] = []  # (position in `starts`, offerings) to price
    waiting: set[tuple[int, int, object]] = set()  # the keys of shared batches a group of the chunk prices
    for k in walking:
        start = starts[k]
        kept = (
            shared.batch(start.static, start.base, start.group.max_cost_per_hs23_hour, batch)
            if start.shareable
            else None
        )
        key = (id(start.static), id(start.base), start.group.max_cost_per_hs23_hour)
        if kept is not None:
            walked[k] = kept
        elif not (start.shareable and key in waiting):
            if start.shareable:
                waiting.add(key)
            asks.append((k, _walk_offerings(start, batch, shared)))
    priced = _price_in_parts([_ask(starts[k], idx) for k, idx in asks], cols, plan_ctx, compat)
    for (k, idx), (more, reasons) in zip(asks, priced, strict=True):
        walked[k] = _batch_of(starts[k], batch, idx, more, reasons, shared)
    for k in walking:  # a shared batch another group of the chunk priced
        if k not in walked:
            start = starts[k]
            found = shared.batch(start.static, start.base, start.group.max_cost_per_hs23_hour, batch)
            assert found is not None  # priced above, by the first group of its key in `waiting`
            walked[k] = found
    # selected group by group: a batch is 1,024 offerings wide, and rows that wide cost more side by side
    # (copied into one matrix) than one by one
    again = [
        _select(walked[k][0], packed_total(walked[k][0], jobs[k]), cols, top_k, per_family, walked[k][1])
        for k in walking
    ]
    for k, short in zip(walking, again, strict=True):
        start = starts[k]
        every_ok, _, _ = shared.allowed(start.static, start.base)
        compatible[k] = len(every_ok)
        if short[2] or walked[k][2] >= len(every_ok):
            shorts[k] = short
        else:
            shorts[k], _ = _walk(start, short, 4 * batch, cols, plan_ctx, compat, shared, top_k, per_family)
    return [
        _headed(start, window, short, count, shared, rate_capped)
        for start, window, short, count in zip(starts, windows, shorts, compatible, strict=True)
    ]


def _price_in_parts(
    asks: Sequence[PriceAsk], cols: OfferingColumns, plan_ctx: PlanContext, compat: CompatContext
) -> list[tuple[GroupCosts, ReasonArray]]:
    """`price_together(asks).parts()`, at most CHUNK_PAIRS offerings priced at a time (the walk's batches
    are 1,024 offerings a group)."""
    out: list[tuple[GroupCosts, ReasonArray]] = []
    at = 0
    while at < len(asks):
        end, pairs = at, 0
        while end < len(asks) and (end == at or pairs + len(asks[end].offerings) <= CHUNK_PAIRS):
            pairs += len(asks[end].offerings)
            end += 1
        out += price_together(asks[at:end], cols, plan_ctx, compat).parts()
        at = end
    return out


def _headed(
    start: _Start,
    window: _FirstWindow,
    short: _Selected,
    compatible: int,
    shared: _Shared,
    rate_capped: Callable[[str], bool],
) -> _Head:
    """The group's head from its final shortlist (`compatible`: the compatible offerings it counted)."""
    group, static, base = start.group, start.static, start.base
    home = _home_offerings(group, static, base, start.egress, shared)
    light = _light_offerings(start.jobs, static, base, shared) if rate_capped(group.experiment) else None
    return _Head(start, window, compatible, (short[0], short[1]), home, light)


def _walk(
    start: _Start,
    short: _Selected,
    batch: int,
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    compat: CompatContext,
    shared: _Shared,
    top_k: int,
    per_family: int,
) -> tuple[_Selected, int]:
    """Walk every compatible offering, cheapest at full packing first, in batches growing fourfold from
    `batch`, until nothing left unpriced can beat the shortlist at the group's size (full packing is a
    lower bound); the shortlist and the count of compatible offerings."""
    every_ok, _, _ = shared.allowed(start.static, start.base)
    exact = short[2]
    while not exact:
        more, bound, priced_count = _walked(start, batch, cols, plan_ctx, compat, shared)
        short = _select(more, packed_total(more, start.jobs), cols, top_k, per_family, bound)
        exact = short[2] or priced_count >= len(every_ok)
        batch *= 4
    return short, len(every_ok)


def _walked(
    start: _Start,
    batch: int,
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    compat: CompatContext,
    shared: _Shared,
) -> _Batch:
    """The walk's batch of `batch` offerings: kept for the groups sharing it, or priced for this group."""
    group, static, base, cap = start.group, start.static, start.base, start.group.max_cost_per_hs23_hour
    walked = shared.batch(static, base, cap, batch) if start.shareable else None
    if walked is None:
        idx = _walk_offerings(start, batch, shared)
        more = group_costs(group, idx, start.jpu, start.egress, cols, plan_ctx, base.risk_factor)
        walked = _batch_of(start, batch, idx, more, compat.priced_reasons(group, more), shared)
    return walked


def _walk_offerings(start: _Start, batch: int, shared: _Shared) -> IntArray:
    """The `batch` allowed offerings cheapest at full packing with the group's egress, cheapest first."""
    static, base, egress = start.static, start.base, start.egress
    allowed = shared.light_index(static, base)
    found = (
        None
        if allowed is None
        else _prefix_cheapest(base, allowed.pos, egress if start.with_egress else None, batch)
    )
    if found is None:
        every_ok, ok_total, ok_location = shared.allowed(static, base)
        # `_full_total` restricted to the allowed offerings (what `_cheapest` would gather)
        full_total = (
            ok_total + egress.usd[ok_location] / start.group.hs23_hours_per_job
            if start.with_egress
            else ok_total
        )
        found = _cheapest_of(full_total, every_ok, batch)
    return found


def _batch_of(
    start: _Start, batch: int, idx: IntArray, more: GroupCosts, reasons: ReasonArray, shared: _Shared
) -> _Batch:
    """The walk's batch of `batch` from its offerings' prices (`more`, `reasons`), kept where groups share
    it."""
    every_ok, _, _ = shared.allowed(start.static, start.base)
    walked = more.take(reasons == 0), _bound(more, len(idx) < len(every_ok)), len(idx)
    if start.shareable:
        shared.keep_batch(start.static, start.base, start.group.max_cost_per_hs23_hour, batch, walked)
    return walked


def _finished(
    head: _Head, home: GroupCosts | None, light: GroupCosts | None, cols: OfferingColumns, per_family: int
) -> GroupCandidates:
    """The group's candidates: its shortlist with `head.home` and `head.light` (`home`, `light`: those
    priced, the ones the price rules allow) merged in."""
    start, (shortlist, packed) = head.start, head.short
    if packed is not None:
        merged = shortlist, packed
        if home is not None:
            merged = _merge_packed(merged, _home(home, start.jobs, cols, per_family))
        if light is not None and (lightest := _light(light, start.jobs, cols, per_family)) is not None:
            merged = _merge_packed(merged, lightest)
        shortlist, packed = merged
    return _candidates_of(head, shortlist, packed)


def _candidates_of(head: _Head, shortlist: GroupCosts, packed: FloatArray | None) -> GroupCandidates:
    start = head.start
    return GroupCandidates(
        group=start.group,
        demand=start.jobs,
        solver=shortlist,
        rejected=head.window.rejected,
        rejected_reason=head.window.rejected_reason,
        compatible_count=head.compatible,
        egress=None if start.egress.none else start.egress,
        packed=packed,
    )


def _finish_many(
    heads: Sequence[_Head],
    found: Sequence[Sequence[GroupCosts | None]],
    cols: OfferingColumns,
    per_family: int,
) -> list[GroupCandidates]:
    """`[_finished(head, home, light, cols, per_family) for head, (home, light) in zip(heads, found)]`, the
    offerings where the groups' data is and those of the least spend rate selected and merged in for all
    the groups at once (group by group, those were a seventh of the 5,000-group plan's costing)."""
    extra: list[list[tuple[GroupCosts, FloatArray]]] = [[] for _ in heads]
    for which in (0, 1):  # merged in this order: a group's home offerings, then its light ones
        asked = [
            (k, costs)
            for k, (head, got) in enumerate(zip(heads, found, strict=True))
            if head.short[1] is not None and (costs := got[which]) is not None and (which == 0 or len(costs))
        ]
        if not asked:
            continue
        jobs = [heads[k].start.jobs for k, _ in asked]
        if which == 0:
            selected = [
                (costs, packed)
                for costs, packed, _ in _select_many(
                    [c for _, c in asked], jobs, [float("inf")] * len(asked), cols, HOME_K, per_family
                )
            ]
        else:
            selected = _light_many([c for _, c in asked], jobs, cols, per_family)
        for (k, _), chosen in zip(asked, selected, strict=True):
            extra[k].append(chosen)
    merging = [k for k in range(len(heads)) if extra[k]]
    merged: dict[int, tuple[GroupCosts, FloatArray]] = {}
    if merging:
        shorts: list[tuple[GroupCosts, FloatArray]] = []
        for k in merging:
            costs, packed = heads[k].short
            assert packed is not None  # extras are found only for shortlists with packed costs
            shorts.append((costs, packed))
        merged = dict(zip(merging, _merge_many(shorts, [extra[k] for k in merging]), strict=True))
    return [_candidates_of(head, *merged.get(k, head.short)) for k, head in enumerate(heads)]


def _merge_many(
    shorts: Sequence[tuple[GroupCosts, FloatArray]], extras: Sequence[Sequence[tuple[GroupCosts, FloatArray]]]
) -> list[tuple[GroupCosts, FloatArray]]:
    """Per group, `_merge_packed` of its shortlist with each of its extras in turn, for all groups at once:
    a column is left out where an earlier piece of its group has its offering, and the rest sorted stably
    by packed cost (one stable sort of the pieces side by side orders as merging them one after another)."""
    pieces = [[short, *more] for short, more in zip(shorts, extras, strict=True)]
    flat = [piece for group in pieces for piece in group]
    sizes = np.array([sum(len(c) for c, _ in group) for group in pieces], dtype=np.int64)
    side = _Side(np.concatenate([c.data for c, _ in flat], axis=1), sizes, np.cumsum(sizes) - sizes)
    packed = np.concatenate([p for _, p in flat])
    order_in_group = np.concatenate([np.arange(len(group)) for group in pieces])
    piece = side.matrix(np.repeat(order_in_group, [len(c) for c, _ in flat]), np.inf)
    offering = side.matrix(side.data[0], -1.0)
    filled = side.filled()
    # [group, column, earlier column]: the same offering in an earlier piece of the group
    again = (
        (offering[:, :, None] == offering[:, None, :])
        & (piece[:, None, :] < piece[:, :, None])
        & filled[:, None, :]
    ).any(axis=2)
    valid = filled & ~again
    at, _ = side.columns(np.lexsort((side.matrix(packed, np.inf), ~valid), axis=1))
    return side.split(at, np.arange(side.width) < valid.sum(axis=1)[:, None], packed)


@dataclass(frozen=True, slots=True)
class _Head:
    """A group's shortlist before the offerings where its data is (`home`) and those of the least spend rate
    (`light`) are merged in: those to price, or None (the exact MILP's shortlist is final: `short`'s packed
    costs are None)."""

    start: _Start
    window: _FirstWindow
    compatible: int
    short: tuple[GroupCosts, FloatArray | None]
    home: IntArray | None
    light: IntArray | None


def build_candidates(
    groups: Sequence[DemandGroup],
    demand: Sequence[int],
    cols: OfferingColumns,
    plan_ctx: PlanContext,
    compat: CompatContext,
    top_k: int | None = TOP_K,
    per_family: int = PER_FAMILY,
    explain_k: int = EXPLAIN_K,
    timings: MutableMapping[str, float] | None = None,
    bases: BaseCosts | None = None,
) -> list[GroupCandidates]:
    """One `GroupCandidates` per group; `timings` receives seconds spent checking and pricing; `bases`: the
    round's costs without egress, when it keeps them for later phases."""
    out: list[GroupCandidates] = []
    spent = {"compatibility": 0.0, "costing": 0.0}
    bases = bases if bases is not None else BaseCosts(cols, plan_ctx)
    order = np.argsort(cols.location, kind="stable")
    cuts = np.flatnonzero(np.diff(cols.location[order])) + 1
    lim = compat.limits

    def rate_capped(experiment: str) -> bool:
        return bool(np.isfinite(lim.facility_spend) or np.isfinite(lim.exp_spend[lim.exp_index[experiment]]))

    locations = {
        cols.locations[int(cols.location[part[0]])]: part for part in np.split(order, cuts) if len(part)
    }
    shared = _Shared(locations, cols.location)
    at = 0
    while at < len(groups):
        # pass 1: each group's first window, found; the windows not shared yet priced together (`price_together`)
        starts: list[_Start] = []
        pending: list[_Pending] = []
        waiting: dict[tuple[int, int, object], int] = {}  # a shared window's key -> its place in `pending`
        pairs = 0
        while at < len(groups) and len(starts) < CHUNK and pairs < CHUNK_PAIRS:
            group, jobs = groups[at], demand[at]
            at += 1
            t0 = time.perf_counter()
            jpu, static = compat.static_reasons(group)
            t1 = time.perf_counter()
            start = _start_of(group, jobs, jpu, static, cols, plan_ctx, bases, shared, top_k)
            if start.window is None:
                key = (id(static), id(start.base), group.max_cost_per_hs23_hour)
                if start.shareable and key in waiting:  # the same window, already to be priced
                    start = replace(start, waiting=waiting[key])
                else:
                    if start.shareable:  # a group with egress prices a window of its own, shared with none
                        waiting[key] = len(pending)
                    start = replace(start, first=_first(start, cols, shared, top_k), waiting=len(pending))
                    pricer = _GroupPricer(
                        group, jpu, start.egress, cols, plan_ctx, compat, start.base.risk_factor
                    )
                    pending.append(_Pending(start, pricer))
                    pairs += len(_first_of(pending[-1]))
            starts.append(start)
            spent["compatibility"] += t1 - t0
            spent["costing"] += time.perf_counter() - t1
        t1 = time.perf_counter()
        windows = [
            _price_first(
                _first_of(wait),
                wait.pricer,
                priced,
                reason,
                wait.start.static,
                wait.start.base,
                cols,
                explain_k,
            )
            for wait, (priced, reason) in zip(
                pending,
                price_together(
                    [_ask(w.start, _first_of(w)) for w in pending], cols, plan_ctx, compat
                ).parts(),
                strict=True,
            )
        ]
        for wait, window in zip(pending, windows, strict=True):
            if wait.start.shareable:
                group = wait.start.group
                shared.keep_window(wait.start.static, wait.start.base, group.max_cost_per_hs23_hour, window)
        spent["costing"] += time.perf_counter() - t1
        # pass 2: each group's shortlist from its first window, then the offerings where its data is and
        # those of the least spend rate, priced together where its window does not hold them
        t1 = time.perf_counter()
        firsts = [start.window if start.window is not None else windows[start.waiting] for start in starts]
        heads = _heads_of(starts, firsts, cols, plan_ctx, compat, shared, top_k, per_family, rate_capped)
        found: list[list[GroupCosts | None]] = []
        asked: list[PriceAsk] = []
        waits: list[tuple[int, int]] = []  # (head, 0 for home or 1 for light) of each of `asked`
        for k, head in enumerate(heads):
            got: list[GroupCosts | None] = []
            for which, idx in enumerate((head.home, head.light)):
                known = None if idx is None else head.window.pricer.known(idx)
                if idx is not None and known is None:
                    asked.append(_ask(head.start, idx))
                    waits.append((k, which))
                got.append(known)
            found.append(got)
        priced = price_together(asked, cols, plan_ctx, compat).parts()
        for (k, which), (costs, reason) in zip(waits, priced, strict=True):
            found[k][which] = costs.take(reason == 0)
        out += _finish_many(heads, found, cols, per_family)
        spent["costing"] += time.perf_counter() - t1
    if timings is not None:
        for phase, seconds in spent.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
    return out

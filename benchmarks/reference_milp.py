"""An exact planning MILP written independently of the planner, solved with HiGHS (highspy), to measure the planner's gap.

It reads the rules from `benchmarks/reference_rules.py` (its own compatibility, economics, egress
and limits; nothing of `provisioner/planner/`) and solves, over every compatible offering:

  x, z, y per (group, offering) pair: units started, unit-waves paid, jobs run (integers);
  y ≤ k·z, z ≤ W·x, Σ_o y ≤ jobs of the group;
  capacity, family quota (cores), facility and experiment spend rate (USD/h), experiment GPUs,
  egress GB caps, allocation node-hours (wave hours × z + start-up × x), experiment budgets;
  egress exactly: per source, the GB leaving it (all groups and directions together) split into
  the marginal tier segments after this period's use, filled in order (binaries), priced per tier.

The volume a source can reach is what every job of every group would move, but never more than an
experiment's egress cap lets it cross, nor than its budget pays for at the source's first marginal
rate (no budget row bills a GB for less): a bound every feasible plan keeps, held by the tier columns.
Budget rows count a transfer at the highest marginal rate its source can reach in this round, so
they never under-estimate money (exact whenever one rate covers the reachable volume).

Lexicographic: first the most served value (share × 2^(priority/10) × HS23-hours per job), then
the least cost (money + allocation value, egress exact) at that value, or at each given floor
(`solve_reference_at`): benchmarks/planner_gap.py asks for the least cost at each value a planner
path served, so that its cost gaps compare plans serving as much (a cheaper reference serving less,
or a dearer one serving more, would make them meaningless). A floor is only a number: the model, its
bounds and its search stay the reference's own. So is a cost cutoff (`cost_cutoffs`, a path's own
cost): HiGHS then drops every branch that cannot beat it, and what the reference states is a plan
cheaper than the cutoff or a bound no higher than it, a proof either way.

The catalog is reduced per group by a dominance rule that cannot exclude an optimum. Offering q
replaces p for any number of jobs n ≤ the group's demand when q has unbounded capacity and no
allocation and, with k (jobs per unit) and K = k·W (per unit over its waves) capped at the demand,
m = ceil(k_p/k_q) and M = ceil(K_p/K_q), q needs at most m times p's unit-waves and M times its units
(ceil(n/k_q) ≤ m·ceil(n/k_p)); so it suffices that: q's money and allocation value per unit-wave × m
and per unit started × M are no larger than p's (so are price and GPUs per unit × M where a
spend-rate or GPU row counts the group's units); q touches no limit row p does not (its quota family
is unlimited, or p's with cores × M no more); and q's transfers are none, or the same input out of
the data's home and the same GB crossing, with q's output leaving the same place as p's, or costing
so little more that q's money per unit-wave × m plus k_p × (its output's dearest reachable marginal
USD per job − p's cheapest) is still no more than p's (n ≤ k_p·ceil(n/k_p)). Every row and the
objective are sums of non-negative multiples of units, unit-waves and GB per source, whose marginal
cost lies between those two rates: swapping p's jobs onto q never breaks a limit nor raises the money
(only the 1e-7 USD per unit that keeps units from starting idle may grow with M; ties go to the
earlier offering).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np

from benchmarks.reference_rules import (
    INF,
    Bools,
    Catalog,
    Economics,
    Floats,
    Ints,
    compatible,
    crossing_gb_per_job,
    economics,
    egress_per_job,
    job_value,
    source_table,
    tier_segments,
)
from provisioner.domain import DemandGroup, PlanningConstraints

# a cost phase serves at least its floor less this share: at 1e-9, HiGHS 1.16 called a phase infeasible
# that the value phase's own point serves (tests/planner/test_reference.py, seed 3716327); serving a
# sliver less can only cost less, so the gaps measured against it are never under-stated
FLOOR_SLACK = 1e-7
CHUNK = 64
UNIT_EPSILON = 1e-7  # USD per unit started, so free units are never started idle
SEED = 1024
BLOCK = 4096


@dataclass(frozen=True, slots=True)
class Assignment:
    group_id: str
    offering_id: str
    units: int
    unit_waves: int
    jobs: int


@dataclass(slots=True)
class ReferenceResult:
    value: float  # served value
    value_bound: float  # an upper bound on the served value (HiGHS's, else the LP relaxation's; inf: none)
    cost: float  # money + allocation value, egress exact
    cost_bound: float  # lower bound at the floor (HiGHS's or the LP relaxation's; = cost if optimal)
    service_floor: float  # the value the cost phase had to serve (the served value unless given)
    at_floor: bool  # the cost phase found a plan serving the floor: `cost` and `assignments` are its
    status: str  # "optimal" or what stopped HiGHS
    assignments: list[Assignment]
    pairs: int
    pairs_before_pruning: int
    seconds: float
    egress_budget_exact: bool  # one marginal rate covers every source's reachable volume
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Pairs:
    group: list[Ints] = field(default_factory=list)
    econ: list[Economics] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Egress:
    """A group's egress on each of its compatible offerings, as the dominance rule compares it: `cls`, the
    transfers out of the data's home and the GB crossing (0: none at all); `up` and `low`, the USD per
    job of the output leaving the offering's own location at the highest and the lowest marginal rate
    its source can reach; `location`, that location's code."""

    cls: Ints
    up: Floats
    low: Floats
    location: Ints


def _dominance_keep(
    econ: Economics,
    demand: int,
    cat: Catalog,
    quota_family: Ints,
    egress: _Egress,
    *,
    rate_rows: bool,
    gpu_rows: bool,
) -> Bools:
    """Which of the group's compatible offerings survive the exact dominance rule (module docstring).
    `rate_rows`, `gpu_rows`: a spend-rate or a GPU row counts the group's units (else price and GPUs
    per unit touch no row and are not compared)."""
    idx = econ.idx
    n = len(idx)
    fixed = np.isfinite(cat.capacity[idx]) | cat.is_allocation[idx]
    keep = fixed.copy()
    free = np.flatnonzero(~fixed)
    if len(free) == 0:
        return keep
    # per wave: USD and allocation value; per unit started: USD, value, and what a spend-rate or GPU row
    # counts; jobs per unit and per unit's waves, capped at the demand (the same ceil(n/k) for n ≤ it)
    per_wave = [econ.money_wave[free], econ.value_wave[free]]
    per_unit = [econ.money_start[free], econ.value_start[free]]
    if rate_rows:
        per_unit.append(cat.price[idx[free]])
    if gpu_rows:
        per_unit.append(cat.gpus[idx[free]].astype(np.float64))
    dims = np.column_stack(per_wave + per_unit)
    # a replacement is no larger in any of these: sorted first, it is met before what it replaces
    order = np.lexsort(tuple(dims[:, j] for j in reversed(range(dims.shape[1]))))
    wave_d, unit_d = dims[order, : len(per_wave)], dims[order, len(per_wave) :]
    unit_d = unit_d[:, np.any(unit_d != 0, axis=0)]
    k = np.minimum(econ.k[free], demand).astype(np.float64)[order]
    big_k = np.minimum(econ.k[free] * econ.waves[free], demand).astype(np.float64)[order]
    q, c = quota_family[free][order], cat.cores[idx[free]].astype(np.float64)[order]
    e, up, low, loc = (getattr(egress, f)[free][order] for f in ("cls", "up", "low", "location"))

    def may(i: Ints, j: Ints) -> Bools:
        """[a, b]: offering i[a] may replace offering j[b] for any n ≤ demand jobs. i runs them in at most
        m = ceil(k_j/k_i) times j's waves and M = ceil(K_j/K_i) times j's units (ceil(n/k_i) ≤
        ceil(n/k_j)·m): each per-wave figure × m and per-unit figure × M no larger than j's, no extra
        limit row (a quota family's cores × M no more), and its output leaving the same place or its
        dearer egress on j's waves (k_j jobs each, n ≤ k_j·ceil(n/k_j)) paid for by what it saves."""
        m = np.ceil(k[j][None, :] / k[i][:, None])
        big_m = np.ceil(big_k[j][None, :] / big_k[i][:, None])
        same_place = loc[i][:, None] == loc[j][None, :]
        dearer = np.where(same_place, 0.0, k[j][None, :] * np.maximum(0.0, up[i][:, None] - low[j][None, :]))
        ok = wave_d[i, 0][:, None] * m + dearer <= wave_d[j, 0][None, :]
        for col in range(1, wave_d.shape[1]):
            ok &= wave_d[i, col][:, None] * m <= wave_d[j, col][None, :]
        for col in range(unit_d.shape[1]):
            ok &= unit_d[i, col][:, None] * big_m <= unit_d[j, col][None, :]
        qi, qj = q[i][:, None], q[j][None, :]
        ok &= (qi < 0) | ((qi == qj) & (c[i][:, None] * big_m <= c[j][None, :]))
        ei, ej = e[i][:, None], e[j][None, :]
        return ok & ((ei == 0) | (ei == ej))

    frontier: list[int] = []  # positions in the sorted order

    def sweep(positions: Ints) -> None:
        """Add the undominated of `positions` (in sorted order, all after the frontier's) to the frontier."""
        for start in range(0, len(positions), CHUNK):
            chunk = positions[start : start + CHUNK]
            dominated = np.zeros(len(chunk), dtype=bool)
            if frontier:
                f = np.asarray(frontier)
                dominated |= may(f, chunk).any(axis=0)
            inner = may(chunk, chunk)
            dominated |= np.triu(inner, k=1).any(axis=0)  # only earlier offerings dominate later ones
            frontier.extend(chunk[~dominated].tolist())

    everything = np.arange(len(order))
    sweep(everything[:SEED])
    rest = everything[SEED:]
    if len(rest):  # most offerings fall to the seed frontier in a few large vectorised comparisons
        f = np.asarray(frontier)
        alive = np.ones(len(rest), dtype=bool)
        for start in range(0, len(rest), BLOCK):
            part = rest[start : start + BLOCK]
            alive[start : start + BLOCK] = ~may(f, part).any(axis=0)
        sweep(rest[alive])
    survivors = [order[np.asarray(frontier, dtype=np.int64)]]
    keep[free[np.concatenate(survivors)]] = True
    assert len(keep) == n
    return keep


def _egress_segments(
    live: Sequence[tuple[DemandGroup, int]], cat: Catalog, constraints: PlanningConstraints, *, bounded: bool
) -> dict[str, list[tuple[float, float]]]:
    """(width GB, USD/GB) of the marginal tiers each billed source can reach this round: the volume of
    every job of every group anywhere; `bounded`: no more than each experiment's egress cap and budget
    let it move (the model then holds the volume under it; module docstring)."""
    locations = sorted(set(cat.location.tolist()))
    destinations: dict[str, set[str]] = defaultdict(set)
    raw: dict[tuple[str, str], float] = defaultdict(float)  # (experiment, source): GB if every job went
    # each transfer a group's job may make: (group, source, GB per job, the source of the input the
    # same job moves out of the data's home, if billed and not this transfer)
    moves: list[tuple[DemandGroup, str, float, str | None]] = []
    for g, jobs in live:
        home = g.data_location
        if home is None:
            continue
        away = [loc for loc in locations if loc != home]
        if g.input_gb_per_job > 0 and any(cat.tiers(home, loc) for loc in away):
            raw[(g.experiment, home)] += jobs * g.input_gb_per_job
            destinations[home].update(loc for loc in away if cat.tiers(home, loc))
            moves.append((g, home, g.input_gb_per_job, None))
        if g.output_gb_per_job > 0:
            for loc in away:
                if cat.tiers(loc, home):
                    raw[(g.experiment, loc)] += jobs * g.output_gb_per_job
                    destinations[loc].add(home)
                    billed_in = g.input_gb_per_job > 0 and cat.tiers(home, loc)
                    moves.append((g, loc, g.output_gb_per_job, home if billed_in else None))
    tables = {src: source_table(cat, src, sorted(dest)) for src, dest in destinations.items()}
    used = {src: constraints.egress_used_gb.get(src, 0.0) for src in tables}
    # the rate of each source's first reachable GB: no budget row bills a GB leaving it for less
    first = {src: tier_segments(tables[src], used[src], 1e-9)[0][1] for src in tables}
    volume = dict(raw)
    if bounded:
        per_gb_capped: dict[tuple[str, str], float] = defaultdict(float)  # at most, over the group's jobs
        per_usd: dict[tuple[str, str], float] = defaultdict(float)
        for g, src, gb, input_src in moves:
            key = (g.experiment, src)
            # a job away from the data's home crosses its input and output GB, all counted by the cap
            per_gb_capped[key] = max(per_gb_capped[key], gb / (g.input_gb_per_job + g.output_gb_per_job))
            # and puts at least its transfers at their first rates on the budget row
            usd = gb * first[src] + (g.input_gb_per_job * first[input_src] if input_src else 0.0)
            per_usd[key] = max(per_usd[key], gb / usd if usd > 0 else math.inf)
        for (experiment, src), gb in raw.items():
            lim = constraints.experiments.get(experiment)
            if lim is None:
                continue
            if lim.egress_cap_gb is not None:
                gb = min(gb, max(0.0, lim.egress_cap_gb) * per_gb_capped[(experiment, src)])
            budget = None if lim.budget_remaining is None else max(0.0, float(lim.budget_remaining))
            if budget is not None and math.isfinite(per_usd[(experiment, src)]):
                gb = min(gb, budget * per_usd[(experiment, src)])
            volume[(experiment, src)] = gb
    reach: dict[str, float] = defaultdict(float)
    for (_, src), gb in volume.items():
        reach[src] += gb
    return {
        src: tier_segments(tables[src], used[src], gb * (1 + 1e-9)) or [(0.0, first[src])]
        for src, gb in reach.items()
    }


class _Model:
    """Columns and ≤/≥ rows for highspy."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[bool] = []
        self.r_lo: list[float] = []
        self.r_hi: list[float] = []
        self.r_idx: list[list[int]] = []
        self.r_val: list[list[float]] = []

    def cols(
        self, count: int, lb: float | Sequence[float], ub: float | Sequence[float], integer: bool
    ) -> int:
        first = len(self.lb)
        self.lb.extend([lb] * count if isinstance(lb, (int, float)) else list(lb))
        self.ub.extend([ub] * count if isinstance(ub, (int, float)) else list(ub))
        self.integer.extend([integer] * count)
        return first

    def row(self, idx: Sequence[int], val: Sequence[float], lo: float = -INF, hi: float = INF) -> None:
        if len(idx):
            self.r_idx.append(list(idx))
            self.r_val.append(list(val))
            self.r_lo.append(lo)
            self.r_hi.append(hi)

    def highs(
        self,
        cost: Floats,
        maximise: bool,
        time_limit: float,
        gap: float,
        *,
        relaxed: bool = False,
        node_limit: int | None = None,
    ) -> highspy.Highs:
        """The model in HiGHS; `relaxed`: its LP relaxation (no integrality)."""
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(time_limit))
        if node_limit is not None:
            h.setOptionValue("mip_max_nodes", node_limit)
        h.setOptionValue("mip_rel_gap", gap)
        h.setOptionValue("threads", 1)
        n = len(self.lb)
        inf = highspy.kHighsInf
        lb = np.array(self.lb)
        ub = np.array([inf if v == INF else v for v in self.ub])
        h.addVars(n, lb, ub)
        integer = np.flatnonzero(np.array(self.integer))
        if len(integer) and not relaxed:
            h.changeColsIntegrality(
                len(integer), integer.astype(np.int32), np.full(len(integer), highspy.HighsVarType.kInteger)
            )
        lens = [len(r) for r in self.r_idx]
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int32)
        h.addRows(
            len(lens),
            np.array([-inf if v == -INF else v for v in self.r_lo]),
            np.array([inf if v == INF else v for v in self.r_hi]),
            int(sum(lens)),
            starts,
            np.concatenate([np.asarray(r, dtype=np.int32) for r in self.r_idx]),
            np.concatenate([np.asarray(r, dtype=np.float64) for r in self.r_val]),
        )
        h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
        h.changeObjectiveSense(highspy.ObjSense.kMaximize if maximise else highspy.ObjSense.kMinimize)
        return h


def _relaxation_bound(
    m: _Model,
    cost: Floats,
    maximise: bool,
    time_limit: float,
    floor: tuple[float, Ints, Floats] | None = None,
) -> float | None:
    """The LP relaxation's optimum, a bound on the MILP's (from above when maximising, from below when
    minimising); None when not solved in time. `floor` (value, columns, weights): with the cost phase's
    row, weights·columns ≥ value; infinite when no plan, integral or not, serves it."""
    h = m.highs(cost, maximise, time_limit, 0.0, relaxed=True)
    if floor is not None:
        value, idx, weights = floor
        h.addRow(value * (1 - FLOOR_SLACK) - 1e-9, highspy.kHighsInf, len(idx), idx.astype(np.int32), weights)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return -math.inf if maximise else math.inf
    if status != highspy.HighsModelStatus.kOptimal:
        return None
    return float(h.getInfo().objective_function_value)


def solve_reference(
    groups: Sequence[DemandGroup],
    offerings: Sequence[object],
    constraints: PlanningConstraints,
    *,
    catalog: Catalog | None = None,
    time_limit: float = 300.0,
    gap: float = 1e-7,
    prune: bool = True,
    service_floor: float | None = None,
) -> ReferenceResult:
    """The exact lexicographic optimum of the instance (no running fleet), with the dominance reduction
    and the bounded egress reach unless `prune` is false (every compatible offering becomes a column and
    every source may reach every job's GB: for tests on small catalogs that both change no optimum).
    `service_floor`: the cost phase serves at least this value instead of what the value phase served."""
    floors = None if service_floor is None else [service_floor]
    return solve_reference_at(
        groups,
        offerings,
        constraints,
        catalog=catalog,
        time_limit=time_limit,
        gap=gap,
        prune=prune,
        service_floors=floors,
    )[0]


def solve_reference_at(
    groups: Sequence[DemandGroup],
    offerings: Sequence[object],
    constraints: PlanningConstraints,
    *,
    catalog: Catalog | None = None,
    time_limit: float = 300.0,
    gap: float = 1e-7,
    prune: bool = True,
    service_floors: Sequence[float] | None = None,
    value_phase: bool = True,
    node_limit: int | None = None,
    cost_cutoffs: Sequence[float] | None = None,
) -> list[ReferenceResult]:
    """`solve_reference` with one value phase and a cost phase per floor in `service_floors` (default:
    the served value), one result each: the least cost of serving each plan's own value.

    `value_phase=False` (needs `service_floors`): cost phases only, for floors added to a stored
    reference whose value phase is already known; the results' value bound is then 0 and their status
    says the value phase was skipped. `node_limit`: HiGHS's branch-and-bound nodes per phase, a stop
    that does not depend on the machine's speed (tests of the bounds a stopped reference states).
    `cost_cutoffs` (one per floor, inf: none): the search at that floor drops every branch that cannot
    cost less than the cutoff (HiGHS's `objective_bound`, which also fixes columns by reduced cost), to
    prove a known plan's cost within reach: either it finds a cheaper plan, or its bound holds up to
    the cutoff (no plan costs less: the least cost is at least the cutoff). The bound stays a proof."""
    if not value_phase and service_floors is None:
        raise ValueError("value_phase=False needs service_floors")
    if cost_cutoffs is not None and (service_floors is None or len(cost_cutoffs) != len(service_floors)):
        raise ValueError("cost_cutoffs needs one cutoff per service floor")
    t0 = time.perf_counter()
    if any(g.max_cost_per_hs23_hour is not None for g in groups):
        raise NotImplementedError("group cost caps are not modelled by the reference")
    cat = catalog or Catalog(offerings, constraints)  # type: ignore[arg-type]
    quota = constraints.family_quota_cores
    family_code = {f: i for i, f in enumerate(sorted(quota))}
    quota_family = np.array([family_code.get(f, -1) for f in cat.family], dtype=np.int64)
    live = [(g, g.jobs) for g in groups if g.jobs > 0]

    segments = _egress_segments(live, cat, constraints, bounded=prune)
    top_rate = {src: max(r for _, r in segs) for src, segs in segments.items()}
    low_rate = {src: min(r for _, r in segs) for src, segs in segments.items()}
    budget_exact = all(len({r for _, r in segs}) == 1 for segs in segments.values())
    location_code = {loc: i for i, loc in enumerate(sorted(set(cat.location.tolist())))}
    egress_at: dict[tuple[object, ...], tuple[tuple[object, ...], float, float]] = {}

    # pairs, reduced by dominance
    pairs = _Pairs()
    before = 0
    for gi, (g, jobs) in enumerate(live):
        idx = np.flatnonzero(compatible(g, cat, constraints)).astype(np.int64)
        before += len(idx)
        econ = economics(g, idx, cat, constraints)
        if prune:
            lim = constraints.experiments.get(g.experiment)
            classes: dict[tuple[object, ...], int] = {(): 0}
            cls, up, low = [], [], []
            for loc in cat.location[idx].tolist():
                where = (g.data_location, g.input_gb_per_job, g.output_gb_per_job, loc)
                if where not in egress_at:
                    flows = egress_per_job(g, loc, cat)
                    gb = crossing_gb_per_job(g, loc)
                    # the input leaving the data's home is the same wherever the job goes: a class; the
                    # output leaving the job's own place is priced at its source's dearest and cheapest
                    # marginal rates, so that a place billing less than another's cheapest may replace it
                    home = tuple((src, gbj) for src, gbj in flows if src != loc)
                    own = [(src, gbj) for src, gbj in flows if src == loc]
                    egress_at[where] = (
                        () if not flows and gb == 0 else (home, gb),
                        sum(gbj * top_rate[src] for src, gbj in own),
                        sum(gbj * low_rate[src] for src, gbj in own),
                    )
                key, usd_up, usd_low = egress_at[where]
                cls.append(classes.setdefault(key, len(classes)))
                up.append(usd_up)
                low.append(usd_low)
            egress = _Egress(
                np.array(cls, dtype=np.int64),
                np.array(up, dtype=np.float64),
                np.array(low, dtype=np.float64),
                np.array([location_code[loc] for loc in cat.location[idx].tolist()], dtype=np.int64),
            )
            keep = _dominance_keep(
                econ,
                jobs,
                cat,
                quota_family[idx],
                egress,
                rate_rows=constraints.spend_rate_cap_per_hour is not None
                or (lim is not None and lim.spend_rate_cap_per_hour is not None),
                gpu_rows=lim is not None and lim.max_gpus is not None,
            )
        else:
            keep = np.ones(len(idx), dtype=bool)
        sel = np.flatnonzero(keep)
        pairs.group.append(np.full(len(sel), gi, dtype=np.int64))
        pairs.econ.append(
            Economics(*(getattr(econ, f)[sel] for f in Economics.__dataclass_fields__))  # type: ignore[arg-type]
        )
    pg = np.concatenate(pairs.group) if pairs.group else np.zeros(0, dtype=np.int64)
    t_pruned = time.perf_counter()

    def cat_field(name: str) -> np.ndarray:
        return np.concatenate([getattr(e, name) for e in pairs.econ]) if pairs.econ else np.zeros(0)

    po = cat_field("idx").astype(np.int64)
    k, w = cat_field("k").astype(np.int64), cat_field("waves").astype(np.int64)
    wave_h = cat_field("wave_hours")
    m_wave, m_start = cat_field("money_wave"), cat_field("money_start")
    v_wave, v_start = cat_field("value_wave"), cat_field("value_start")
    p = len(po)

    m = _Model()
    demand = np.array([jobs for _, jobs in live], dtype=np.float64)
    d_pair = demand[pg] if p else np.zeros(0)
    x0 = m.cols(p, 0.0, np.ceil(d_pair / np.maximum(k * w, 1)).tolist(), True)
    z_max = np.ceil(d_pair / np.maximum(k, 1))  # unit-waves the group's jobs can fill
    z0 = m.cols(p, 0.0, z_max.tolist(), True)
    y0 = m.cols(p, 0.0, d_pair.tolist(), True)
    # egress segment columns
    seg_cols: dict[str, list[tuple[int, float, float]]] = {}
    for src, segs in segments.items():
        cols = []
        for width, rate in segs:
            cols.append((m.cols(1, 0.0, width, False), width, rate))
        seg_cols[src] = cols
    # linking jobs, waves, units: y ≤ min(k, D)·z and z ≤ min(W, ceil(D/k))·x, the same integer points as
    # y ≤ k·z and z ≤ W·x under the bounds y ≤ D and z ≤ ceil(D/k), with a tighter LP relaxation (a
    # unit-wave of a group smaller than a unit then costs whole in the relaxation too); and x ≤ z: a unit
    # started runs at least one wave, as the checker counts it (a free allocation unit without a wave,
    # a tie in the value phase, once left the plan 0.90 node-hours over the grant by the checker's count)
    k_rows = np.minimum(k, d_pair.astype(np.int64))
    w_rows = np.minimum(w, z_max.astype(np.int64))
    for j in range(p):
        m.row([y0 + j, z0 + j], [1.0, -float(k_rows[j])], hi=0.0)
        m.row([z0 + j, x0 + j], [1.0, -float(w_rows[j])], hi=0.0)
        m.row([x0 + j, z0 + j], [1.0, -1.0], hi=0.0)
    by_group: dict[int, list[int]] = defaultdict(list)
    for j, gi in enumerate(pg.tolist()):
        by_group[gi].append(j)
    for gi, js in by_group.items():
        m.row([y0 + j for j in js], [1.0] * len(js), hi=float(demand[gi]))
    # limits
    exp_of = [live[gi][0].experiment for gi in pg.tolist()]
    price, cores, gpus = cat.price[po], cat.cores[po].astype(float), cat.gpus[po].astype(float)
    cap_rows: dict[int, list[int]] = defaultdict(list)
    fam_rows: dict[str, list[int]] = defaultdict(list)
    exp_rows: dict[str, list[int]] = defaultdict(list)
    for j in range(p):
        o = int(po[j])
        if math.isfinite(cat.capacity[o]) or cat.is_allocation[o]:
            cap_rows[o].append(j)
        if cat.family[o] in quota:
            fam_rows[str(cat.family[o])].append(j)
        exp_rows[exp_of[j]].append(j)
    for o, js in cap_rows.items():
        if math.isfinite(cat.capacity[o]):
            m.row([x0 + j for j in js], [1.0] * len(js), hi=float(cat.capacity[o]))
        if math.isfinite(cat.node_hours[o]):
            m.row(
                [z0 + j for j in js] + [x0 + j for j in js],
                [float(wave_h[j]) for j in js] + [float(cat.startup[o]) for _ in js],
                hi=float(cat.node_hours[o]),
            )
    for fam, js in fam_rows.items():
        m.row([x0 + j for j in js], [float(cores[j]) for j in js], hi=float(quota[fam]))
    if constraints.spend_rate_cap_per_hour is not None:
        m.row([x0 + j for j in range(p)], price.tolist(), hi=float(constraints.spend_rate_cap_per_hour))
    pair_flows = [
        egress_per_job(live[gi][0], str(cat.location[po[j]]), cat) for j, gi in enumerate(pg.tolist())
    ]
    for name, lim in constraints.experiments.items():
        js = exp_rows.get(name, [])
        if not js:
            continue
        if lim.spend_rate_cap_per_hour is not None:
            m.row([x0 + j for j in js], [float(price[j]) for j in js], hi=float(lim.spend_rate_cap_per_hour))
        if lim.max_gpus is not None:
            m.row([x0 + j for j in js], [float(gpus[j]) for j in js], hi=float(lim.max_gpus))
        if lim.egress_cap_gb is not None:
            gb = [crossing_gb_per_job(live[pg[j]][0], str(cat.location[po[j]])) for j in js]
            m.row([y0 + j for j in js], gb, hi=lim.egress_cap_gb)
        if lim.budget_remaining is not None:
            egress_usd = [sum(gbj * top_rate[src] for src, gbj in pair_flows[j]) for j in js]
            m.row(
                [z0 + j for j in js] + [x0 + j for j in js] + [y0 + j for j in js],
                [float(m_wave[j]) for j in js] + [float(m_start[j]) for j in js] + egress_usd,
                hi=float(lim.budget_remaining),
            )
    # egress volumes per source, tiers filled in order
    flows_by_src: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for j, flows in enumerate(pair_flows):
        for src, gbj in flows:
            flows_by_src[src].append((j, gbj))
    for src, cols in seg_cols.items():
        fl = flows_by_src.get(src, [])
        m.row(
            [c for c, _, _ in cols] + [y0 + j for j, _ in fl],
            [1.0] * len(cols) + [-g for _, g in fl],
            lo=0.0,
            hi=0.0,
        )
        for (c1, w1, _), (c2, w2, _) in itertools.pairwise(cols):
            if not math.isfinite(w1):
                break
            delta = m.cols(1, 0.0, 1.0, True)
            m.row([c1, delta], [1.0, -w1], lo=0.0)  # the next tier opens only once this one is full
            m.row([c2, delta], [1.0, -min(w2, 1e12)], hi=0.0)

    n = len(m.lb)
    if p == 0:
        return [
            ReferenceResult(
                0.0,
                0.0,
                0.0,
                0.0,
                floor,
                floor <= 0,
                "optimal",
                [],
                0,
                before,
                time.perf_counter() - t0,
                budget_exact,
            )
            for floor in service_floors or [0.0]
        ]
    values = np.array([job_value(g, constraints) for g, _ in live])
    c1 = np.zeros(n)
    c1[y0 : y0 + p] = values[pg]
    t_model = time.perf_counter()
    h = m.highs(c1, True, time_limit, gap, node_limit=node_limit)
    if value_phase:
        h.run()
        status1 = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        sol = np.array(h.getSolution().col_value)
        if len(sol) != n:
            raise RuntimeError(f"reference: no solution in phase 1 ({status1})")
        served = float(c1 @ sol)
        bound = float(info.mip_dual_bound)
        if status1 == "Optimal":
            bound = bound if math.isfinite(bound) else served
        else:
            # stopped early: HiGHS's bound (none, or one below its own incumbent, when it stopped before
            # having one) or the LP relaxation's, the tighter; infinite (unknown) when neither is had
            if not math.isfinite(bound) or bound < served * (1 - 1e-9) - 1e-9:
                bound = math.inf
            relaxed = _relaxation_bound(m, c1, True, time_limit)
            bound = min(bound, math.inf if relaxed is None else relaxed)
    else:  # the empty plan is feasible: the fallback when a cost phase finds nothing at its floor
        status1, sol, served, bound = "skipped", np.zeros(n), 0.0, 0.0
    c2 = np.zeros(n)
    c2[x0 : x0 + p] = m_start + v_start + UNIT_EPSILON  # no unit started for nothing
    c2[z0 : z0 + p] = m_wave + v_wave
    for cols in seg_cols.values():
        for c, _, rate in cols:
            c2[c] = rate
    # phase 2, per floor: at least that value (less a sliver for float noise), least cost
    h.changeColsCost(n, np.arange(n, dtype=np.int32), c2)
    h.changeObjectiveSense(highspy.ObjSense.kMinimize)
    floor_row = h.getNumRow()
    y_cols = np.arange(y0, y0 + p, dtype=np.int32)
    h.addRow(-highspy.kHighsInf, highspy.kHighsInf, p, y_cols, values[pg])
    phase1 = sol
    out = []
    floors = [served] if service_floors is None else list(service_floors)
    cutoffs = [math.inf] * len(floors) if cost_cutoffs is None else list(cost_cutoffs)
    for floor, cutoff in zip(floors, cutoffs, strict=True):
        h.changeRowBounds(floor_row, floor * (1 - FLOOR_SLACK) - 1e-9, highspy.kHighsInf)
        h.setOptionValue("objective_bound", float(cutoff))
        h.run()
        status2 = h.modelStatusToString(h.getModelStatus())
        info2 = h.getInfo()
        sol2 = np.array(h.getSolution().col_value)
        sol, at_floor = phase1, floor <= 0
        if len(sol2) == n and float(values[pg] @ sol2[y0 : y0 + p]) >= floor * (1 - 1e-6):
            sol, at_floor = sol2, True
        x = np.rint(sol[x0 : x0 + p]).astype(np.int64)
        z = np.rint(sol[z0 : z0 + p]).astype(np.int64)
        y = np.rint(sol[y0 : y0 + p]).astype(np.int64)
        assignments = [
            Assignment(live[int(pg[j])][0].id, cat.offerings[int(po[j])].id, int(x[j]), int(z[j]), int(y[j]))
            for j in range(p)
            # units without jobs (a tie within HiGHS's gap: a free allocation's start-up) serve nothing,
            # and every row counts units and waves with non-negative weights: they are left out
            if y[j] > 0
        ]
        cost = float(c2 @ sol)
        # a cutoff drops every branch costing at least it: the least cost is at least the cutoff or the
        # bound of the branches left, the less. When the cutoff is below the optimum, HiGHS 1.16 states
        # bounds, and even "Optimal", above the true optimum: only that minimum is a proof
        cut = math.isfinite(cutoff)
        solved = status2 == "Optimal" and at_floor and (not cut or cost < cutoff)
        mip_bound = float(info2.mip_dual_bound) if math.isfinite(info2.mip_dual_bound) else 0.0
        # (and "Infeasible" proves nothing: HiGHS 1.16 has said it of a phase the value phase's point serves)
        mip_bound = min(mip_bound, cutoff)
        if solved:  # phase 2 proven: its cost is the least at the floor
            cost_bound = cost
        else:
            # else HiGHS's lower bound or the LP relaxation's at the floor, the tighter (a plan short of the
            # floor says nothing about the cost of serving it)
            relaxed = _relaxation_bound(m, c2, False, time_limit, (floor, y_cols, values[pg]))
            cost_bound = max(0.0, mip_bound, -math.inf if relaxed is None else relaxed)
            cost_bound = min(cost, cost_bound) if at_floor else cost_bound
        proven = solved and status1 in ("Optimal", "skipped")
        status = "optimal" if proven else f"phase 1 {status1}, phase 2 {status2}"
        status += f" (cutoff {cutoff:.6g})" if cut else ""
        out.append(
            ReferenceResult(
                value=float(values[pg] @ y),
                value_bound=bound,
                cost=cost,
                cost_bound=cost_bound,
                service_floor=floor,
                at_floor=at_floor,
                status=status,
                assignments=assignments,
                pairs=p,
                pairs_before_pruning=before,
                seconds=time.perf_counter() - t0,
                egress_budget_exact=budget_exact,
                notes=[
                    f"pruning {t_pruned - t0:.1f} s, model {t_model - t_pruned:.1f} s, "
                    f"solve {time.perf_counter() - t_model:.1f} s"
                ],
            )
        )
    return out

"""An independent plan checker: re-prices every plan item from the rules in `reference_rules.py` and counts broken limits.

For each item it checks compatibility and packing (jobs ≤ units × k × W), then charges what the
item needs at least: ceil(jobs / k) unit-waves, and one wave per unit started, each paid whole,
plus start-up per unit; egress is priced exactly per source on marginal tiers over the plan's total
volume leaving that source (shared by all groups and directions), and split between experiments in
proportion to their GB (so the split sums to the exact total). It then adds up every limit:
demand per group, capacity, family quotas, facility and experiment spend rate, GPUs, egress GB
caps, budgets (checker money) and allocation node-hours; and compares the stated costs with the
checker's money (an item stating less than its compute, or a plan stating less than compute plus
exact egress in all, is counted as under-priced).

The plan's objective here is money + allocation value with exact egress; its service is the served
value of `reference_rules.job_value`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmarks.reference_rules import (
    Catalog,
    compatible,
    crossing_gb_per_job,
    economics,
    egress_per_job,
    job_value,
    source_table,
    tier_cost,
)
from provisioner.domain import DemandGroup, PlanningConstraints

REL = 1e-7  # relative tolerance on float sums compared with Decimal limits


@dataclass(frozen=True, slots=True)
class Usage:
    """One planned (group, offering) use: units started, jobs run; waves are derived unless given."""

    group_id: str
    offering_id: str
    units: int
    jobs: int
    stated_cost: float | None = None  # what the plan says it costs (compute + egress), if it says
    unit_waves: int | None = None


@dataclass(slots=True)
class Check:
    violations: list[str] = field(default_factory=list)
    under_priced: list[str] = field(default_factory=list)
    value: float = 0.0
    work: float = 0.0
    money: float = 0.0
    cost: float = 0.0  # money + allocation value
    egress_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations


def _over(amount: float, limit: float) -> bool:
    return amount > limit * (1 + REL) + 1e-6


def check_plan(
    groups: Sequence[DemandGroup],
    catalog: Catalog,
    constraints: PlanningConstraints,
    usages: Iterable[Usage],
) -> Check:
    out = Check()
    by_id = {g.id: g for g in groups}
    jobs_of: dict[str, int] = defaultdict(int)
    units_of: dict[int, int] = defaultdict(int)
    cores_of: dict[str, float] = defaultdict(float)
    rate_of: dict[str, float] = defaultdict(float)
    gpus_of: dict[str, float] = defaultdict(float)
    gb_of: dict[str, float] = defaultdict(float)
    money_of: dict[str, float] = defaultdict(float)
    hours_of: dict[int, float] = defaultdict(float)
    volume: dict[str, float] = defaultdict(float)
    volume_exp: dict[tuple[str, str], float] = defaultdict(float)
    dests: dict[str, set[str]] = defaultdict(set)
    stated: list[tuple[Usage, float, list[tuple[str, float]]]] = []
    compat_cache: dict[str, np.ndarray] = {}
    for u in usages:
        if u.jobs <= 0 and u.units <= 0:
            continue
        g = by_id.get(u.group_id)
        o = catalog.index.get(u.offering_id)
        if g is None or o is None:
            out.violations.append(f"{u.group_id} on {u.offering_id}: unknown group or offering")
            continue
        ok = compat_cache.get(g.id)
        if ok is None:
            ok = compat_cache[g.id] = compatible(g, catalog, constraints)
        if not ok[o]:
            out.violations.append(f"{g.id} on {u.offering_id}: incompatible offering")
            continue
        e = economics(g, np.array([o]), catalog, constraints)
        k, w = int(e.k[0]), int(e.waves[0])
        if u.jobs > u.units * k * w:
            out.violations.append(f"{g.id} on {u.offering_id}: {u.jobs} jobs do not fit {u.units} units")
        waves = max(math.ceil(u.jobs / k), u.units, u.unit_waves or 0)
        money = float(e.money_wave[0]) * waves + float(e.money_start[0]) * u.units
        value = float(e.value_wave[0]) * waves + float(e.value_start[0]) * u.units
        if catalog.is_allocation[o]:
            hours_of[o] += float(e.wave_hours[0]) * waves + float(catalog.startup[o]) * u.units
        jobs_of[g.id] += u.jobs
        units_of[o] += u.units
        fam = str(catalog.family[o])
        cores_of[fam] += float(catalog.cores[o]) * u.units
        rate_of[g.experiment] += float(catalog.price[o]) * u.units
        gpus_of[g.experiment] += float(catalog.gpus[o]) * u.units
        loc = str(catalog.location[o])
        gb_of[g.experiment] += crossing_gb_per_job(g, loc) * u.jobs
        money_of[g.experiment] += money
        out.money += money
        out.cost += money + value
        out.value += job_value(g, constraints) * u.jobs
        out.work += g.hs23_hours_per_job * u.jobs
        flows = egress_per_job(g, loc, catalog)
        for src, gb in flows:
            volume[src] += gb * u.jobs
            volume_exp[(src, g.experiment)] += gb * u.jobs
            dests[src].add(g.data_location if src == loc else loc)  # type: ignore[arg-type]
        stated.append((u, money, flows))
    # exact egress per source, split by GB between experiments
    rate_of_src: dict[str, float] = {}
    for src, gb in volume.items():
        table = source_table(catalog, src, sorted(dests[src]))
        usd = tier_cost(table, constraints.egress_used_gb.get(src, 0.0), gb)
        rate_of_src[src] = usd / gb if gb > 0 else 0.0
        out.egress_usd += usd
    for (src, exp), gb in volume_exp.items():
        money_of[exp] += gb * rate_of_src[src]
    out.money += out.egress_usd
    out.cost += out.egress_usd
    # stated money: each item at least its compute, and the plan at least compute plus exact egress (how
    # egress is split between items depends on their order on the tiers, so only the total is checked)
    stated_total = 0.0
    for u, money, _ in stated:
        if u.stated_cost is None:
            continue
        stated_total += u.stated_cost
        if u.stated_cost < money * (1 - 1e-6) - 1e-6:
            out.under_priced.append(
                f"{u.group_id} on {u.offering_id}: states ${u.stated_cost:.4f}, its compute alone is ${money:.4f}"
            )
    if any(u.stated_cost is not None for u, _, _ in stated) and stated_total < out.money * (1 - 1e-6) - 1e-6:
        out.under_priced.append(f"the plan states ${stated_total:.4f} in all, it needs ${out.money:.4f}")
    # limits
    for gid, n in jobs_of.items():
        if n > by_id[gid].jobs:
            out.violations.append(f"{gid}: {n} jobs planned, {by_id[gid].jobs} pending")
    for o, n in units_of.items():
        if n > catalog.capacity[o]:
            out.violations.append(
                f"{catalog.offerings[o].id}: {n} units over capacity {catalog.capacity[o]:g}"
            )
    for o, hours in hours_of.items():
        if _over(hours, float(catalog.node_hours[o])):
            out.violations.append(
                f"{catalog.offerings[o].id}: {hours:.2f} node-hours over {catalog.node_hours[o]:.2f}"
            )
    for fam, quota in constraints.family_quota_cores.items():
        if cores_of.get(fam, 0.0) > quota:
            out.violations.append(f"quota {fam}: {cores_of[fam]:g} cores over {quota}")
    if constraints.spend_rate_cap_per_hour is not None:
        total = sum(rate_of.values())
        if _over(total, float(constraints.spend_rate_cap_per_hour)):
            out.violations.append(
                f"facility spend rate ${total:.2f}/h over ${constraints.spend_rate_cap_per_hour}/h"
            )
    for name, lim in constraints.experiments.items():
        if lim.spend_rate_cap_per_hour is not None and _over(
            rate_of[name], float(lim.spend_rate_cap_per_hour)
        ):
            out.violations.append(
                f"{name} spend rate ${rate_of[name]:.2f}/h over ${lim.spend_rate_cap_per_hour}/h"
            )
        if lim.max_gpus is not None and gpus_of[name] > lim.max_gpus:
            out.violations.append(f"{name}: {gpus_of[name]:g} GPUs over {lim.max_gpus}")
        if lim.egress_cap_gb is not None and _over(gb_of[name], lim.egress_cap_gb):
            out.violations.append(f"{name}: {gb_of[name]:.1f} GB egress over cap {lim.egress_cap_gb:g}")
        if lim.budget_remaining is not None and _over(money_of[name], float(lim.budget_remaining)):
            out.violations.append(f"{name}: ${money_of[name]:.2f} over budget ${lim.budget_remaining}")
    return out

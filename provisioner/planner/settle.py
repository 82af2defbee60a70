"""Turns a solver solution into plan items priced exactly in Decimal, trimming units where rounding would break a hard limit.

The solver works in floats with a small safety margin; here every item is re-priced from the
offering's Decimal price, with egress on marginal tiers accumulated across items in order, and the
spend-rate caps, egress caps and budgets are re-checked exactly. Anything over a limit is trimmed
from the least valuable items of the experiment concerned (whole unit-waves or units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import numpy as np

from policies.egress import marginal_egress_cost
from provisioner.domain import CostBreakdown, PlanItem, PlanningConstraints
from provisioner.planner.columns import OfferingColumns
from provisioner.planner.cost import PlanContext
from provisioner.planner.drain import FleetAssessment
from provisioner.planner.problem import Problem, Solution

MICRO = Decimal("0.000001")
RATE_PLACES = Decimal("0.000000000001")
MAX_TRIM_ROUNDS = 1000


@dataclass(slots=True)
class Draft:
    """A mutable plan item while it is being checked."""

    pair: int
    units: int
    unit_waves: int
    jobs: int
    experiment: str  # its group's: each trim reads it for every item, for each experiment with a limit
    money: Decimal = Decimal(0)
    egress: Decimal = Decimal(0)


def _decimal(value: float) -> Decimal:
    return Decimal(f"{value:.9f}")


class Settler:
    def __init__(
        self,
        problem: Problem,
        cols: OfferingColumns,
        ctx: PlanContext,
        constraints: PlanningConstraints,
        fleet: FleetAssessment,
    ) -> None:
        self.pr, self.cols, self.ctx, self.constraints, self.fleet = problem, cols, ctx, constraints, fleet

    def settle(self, solution: Solution) -> list[PlanItem]:
        pr = self.pr
        order = np.lexsort((np.arange(pr.pairs), -pr.value[pr.pair_group]))  # most valuable first
        experiment = [c.group.experiment for c in pr.candidates]
        pair_group = pr.pair_group.tolist()
        units, waves, jobs = solution.units.tolist(), solution.unit_waves.tolist(), solution.jobs.tolist()
        drafts = [
            Draft(p, units[p], waves[p], jobs[p], experiment[pair_group[p]])
            for p in order.tolist()
            if jobs[p] > 0
        ]
        self._price(drafts)
        for _ in range(MAX_TRIM_ROUNDS):
            if not (
                self._trim_spend(drafts)
                or self._trim_egress(drafts)
                or self._trim_budget(drafts)
                or self._trim_over_cap(drafts)
            ):
                break
            drafts = [d for d in drafts if d.jobs > 0]
            self._price(drafts)
        return [self._item(d) for d in drafts if d.jobs > 0]

    # --- exact pricing -------------------------------------------------------------------------

    def _price(self, drafts: list[Draft]) -> None:
        used = dict(self.constraints.egress_used_gb)
        for d in drafts:
            o = self.cols.offerings[int(self.pr.pair_offering[d.pair])]
            slot = self._slot(d.pair)
            wave_hours = _decimal(float(slot[0]))
            startup = Decimal(o.startup_seconds) / Decimal(3600)
            compute = o.price_per_hour * (d.unit_waves * wave_hours + d.units * startup)
            d.egress = self._egress(d, o.location, used)
            d.money = (compute + d.egress).quantize(MICRO, rounding=ROUND_CEILING)

    def _slot(self, p: int) -> tuple[float, float]:
        cand = self.pr.candidates[int(self.pr.pair_group[p])]
        s = int(self.pr.pair_slot[p])
        return float(cand.solver.wave_hours[s]), float(cand.solver.run_hours[s])

    def _egress(self, d: Draft, location: str, used: dict[str, float]) -> Decimal:
        group = self.pr.candidates[int(self.pr.pair_group[d.pair])].group
        source = group.data_location
        if source is None or source == location:
            return Decimal(0)
        total = Decimal(0)
        for frm, to, gb in (
            (source, location, d.jobs * group.input_gb_per_job),
            (location, source, d.jobs * group.output_gb_per_job),
        ):
            tiers = self.ctx.egress.tiers(frm, to)
            if gb > 0 and tiers:
                total += marginal_egress_cost(gb, used.get(frm, 0.0), tiers)
            used[frm] = used.get(frm, 0.0) + gb
        return total

    # --- trimming ------------------------------------------------------------------------------

    def _shrink_units(self, d: Draft, units: int) -> None:
        p = d.pair
        d.units = max(0, units)
        d.unit_waves = min(d.unit_waves, d.units * int(self.pr.waves[p]))
        d.jobs = min(d.jobs, d.unit_waves * int(self.pr.jobs_per_unit[p]))

    def _shrink_waves(self, d: Draft, unit_waves: int) -> None:
        p = d.pair
        d.unit_waves = max(0, unit_waves)
        d.jobs = min(d.jobs, d.unit_waves * int(self.pr.jobs_per_unit[p]))
        d.units = min(d.units, math.ceil(d.unit_waves / int(self.pr.waves[p])))

    def _rate(self, d: Draft) -> Decimal:
        return self.cols.offerings[int(self.pr.pair_offering[d.pair])].price_per_hour * d.units

    def _trim_spend(self, drafts: list[Draft]) -> bool:
        caps: list[tuple[Decimal, Decimal, list[Draft]]] = []
        if self.constraints.spend_rate_cap_per_hour is not None:
            caps.append((self.constraints.spend_rate_cap_per_hour, self.fleet.spend_per_hour, drafts))
        for name, lim in self.constraints.experiments.items():
            if lim.spend_rate_cap_per_hour is not None:
                mine = [d for d in drafts if d.experiment == name]
                fleet = self.fleet.spend_per_hour_by_experiment.get(name, Decimal(0))
                caps.append((lim.spend_rate_cap_per_hour, fleet, mine))
        for cap, fleet, members in caps:
            excess = fleet + sum((self._rate(d) for d in members), Decimal(0)) - cap
            if excess > 0:
                for d in reversed(members):  # least valuable first
                    price = self._rate(d) / d.units if d.units else Decimal(0)
                    if price > 0:
                        self._shrink_units(d, d.units - math.ceil(excess / price))
                        return True
        return False

    def _trim_egress(self, drafts: list[Draft]) -> bool:
        for name, lim in self.constraints.experiments.items():
            if lim.egress_cap_gb is None:
                continue
            mine = [d for d in drafts if d.experiment == name]
            gb = [float(self.pr.egress_gb_job[d.pair]) * d.jobs for d in mine]
            excess = sum(gb) - lim.egress_cap_gb
            if excess > 1e-9:
                for d in reversed(mine):
                    per_job = float(self.pr.egress_gb_job[d.pair])
                    if per_job > 0 and d.jobs > 0:
                        d.jobs = max(0, d.jobs - math.ceil(excess / per_job - 1e-12))
                        self._shrink_waves(d, math.ceil(d.jobs / int(self.pr.jobs_per_unit[d.pair])))
                        return True
        return False

    def _trim_budget(self, drafts: list[Draft]) -> bool:
        for name, lim in self.constraints.experiments.items():
            if lim.budget_remaining is None:
                continue
            mine = [d for d in drafts if d.experiment == name]
            excess = sum((d.money for d in mine), Decimal(0)) - lim.budget_remaining
            if excess > 0:
                for d in reversed(mine):
                    if d.unit_waves > 0 and d.money > 0:
                        per_wave = d.money / d.unit_waves
                        self._shrink_waves(d, d.unit_waves - max(1, math.ceil(excess / per_wave)))
                        return True
        return False

    def _trim_over_cap(self, drafts: list[Draft]) -> bool:
        """Items of a group with a cost cap whose cost per HS23-hour (money + allocation value) is over it."""
        for d in drafts:
            group = self.pr.candidates[int(self.pr.pair_group[d.pair])].group
            if group.max_cost_per_hs23_hour is None or d.jobs == 0:
                continue
            i = int(self.pr.pair_offering[d.pair])
            wave_hours, _ = self._slot(d.pair)
            startup = self.cols.offerings[i].startup_seconds / 3600.0
            value = float(self.ctx.allocation_value[i]) * (d.unit_waves * wave_hours + d.units * startup)
            per_hs23 = (float(d.money) + value) / (d.jobs * group.hs23_hours_per_job)
            if per_hs23 > float(group.max_cost_per_hs23_hour):
                jpu = int(self.pr.jobs_per_unit[d.pair])
                d.jobs = (d.jobs - 1) // jpu * jpu  # drop the partial (or the last) wave
                self._shrink_waves(d, d.jobs // jpu)
                return True
        return False

    # --- output --------------------------------------------------------------------------------

    def _item(self, d: Draft) -> PlanItem:
        pr = self.pr
        g, p = int(pr.pair_group[d.pair]), d.pair
        cand = pr.candidates[g]
        i = int(pr.pair_offering[p])
        o = self.cols.offerings[i]
        wave_hours, run_hours = self._slot(p)
        work = d.jobs * cand.group.hs23_hours_per_job
        price = float(o.price_per_hour)
        value = float(self.ctx.allocation_value[i])
        startup_hours = o.startup_seconds / 3600.0

        def per_work(usd: float) -> Decimal:
            return Decimal(usd / work).quantize(RATE_PLACES) if work > 0 else Decimal(0)

        breakdown = CostBreakdown(
            compute=per_work(price * d.unit_waves * run_hours),
            interruption=per_work((price + value) * d.unit_waves * (wave_hours - run_hours)),
            egress=(d.egress / Decimal(repr(work))).quantize(RATE_PLACES) if work > 0 else Decimal(0),
            startup=per_work((price + value) * d.units * startup_hours),
            allocation_value=per_work(value * d.unit_waves * run_hours),
        )
        return PlanItem(
            group_id=cand.group.id,
            offering_id=o.id,
            units=d.units,
            jobs=d.jobs,
            hours=d.unit_waves * wave_hours / max(d.units, 1) + startup_hours,  # mean over the units
            cost=d.money,
            cost_per_hs23_hour=breakdown,
        )

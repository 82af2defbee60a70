"""What an experiment's token sees of views that span experiments: the event log and the dry-run plan.

An event is an experiment's when it is about one of its resources or requests, is a budget event for it,
or names it in its payload; everything else (plans, circuit breakers, cycles, backends) is the operators'.
A dry-run plan shown to an experiment keeps its own demand groups and the drains of its own units, and its
totals are recomputed from those, so nothing of another experiment's demand shows through.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import ColumnElement, Engine, false, or_
from sqlmodel import Session, col, select

from provisioner.api.schemas import PlanOut
from provisioner.domain import DemandGroup, Offering
from provisioner.model import BurstRequestRow, EventRow, ResourceRow

BUDGET_EVENTS = ("budget.forecast_exceeded", "budget.forecast_ok")  # subject: the experiment


def events_of(experiments: frozenset[str]) -> ColumnElement[bool]:
    """A WHERE clause keeping the events of `experiments` only."""
    if not experiments:
        return false()
    names = sorted(experiments)
    return or_(
        col(EventRow.subject).in_(select(ResourceRow.id).where(col(ResourceRow.experiment).in_(names))),
        col(EventRow.subject).in_(select(BurstRequestRow.id).where(col(BurstRequestRow.experiment).in_(names))),
        (col(EventRow.kind).in_(BUDGET_EVENTS)) & (col(EventRow.subject).in_(names)),
        EventRow.payload["experiment"].as_string().in_(names),
    )


def plan_for(
    out: PlanOut,
    experiments: frozenset[str],
    *,
    groups: Iterable[DemandGroup],
    offerings: Iterable[Offering],
    db: Engine,
) -> PlanOut:
    """`out` cut to what `experiments` own: their groups, their items, their units' drains, and totals of those."""
    mine = [g for g in groups if g.experiment in experiments]
    ids = {g.id for g in mine} | {e.group_id for e in out.explanations if e.experiment in experiments}
    items = [i for i in out.items if i.group_id in ids]
    drained = [d.resource_id for d in out.drains]
    with Session(db) as session:
        owned = set(
            session.exec(
                select(ResourceRow.id).where(
                    col(ResourceRow.id).in_(drained), col(ResourceRow.experiment).in_(sorted(experiments))
                )
            )
        )
    price = {o.id: o.price_per_hour for o in offerings}
    return out.model_copy(
        update={
            "explanations": [e for e in out.explanations if e.group_id in ids],
            "items": items,
            "drains": [d for d in out.drains if d.resource_id in owned],
            "demand_groups": len(mine),
            "pending_jobs": sum(g.jobs for g in mine),
            "total_cost_usd": sum((i.cost_usd for i in items), Decimal(0)),
            "spend_rate_usd_per_hour": sum(
                (price.get(i.offering_id, Decimal(0)) * i.units for i in items), Decimal(0)
            ),
        }
    )

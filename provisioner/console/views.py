"""What each console page shows, read from the database and the policy (plain data for the templates)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

import policies
from accounting.billing import price_in_force
from accounting.spot_prices import StoredSpotPrices
from provisioner.domain import LIVE_STATES, Market
from provisioner.model import (
    BurstRequestRow,
    DecisionRow,
    OfferingHealthRow,
    PlanRow,
    ResourceRow,
    from_micro,
    row_time,
)
from provisioner.requests import RequestStatus, cost_of_resources, request_resources

LIVE = {str(s) for s in LIVE_STATES}


@dataclass(frozen=True)
class FleetLine:
    backend: str
    market: str
    state: str
    units: int
    cores: int
    usd_per_hour: Decimal


def fleet(db: Engine, experiments: frozenset[str] | None, now: datetime) -> list[FleetLine]:
    """Live units (requested → draining) grouped by backend, market and state; USD per hour is the
    price in force now as billing prices it (the spot price history in the zone used)."""
    query = select(ResourceRow).where(col(ResourceRow.state).in_(sorted(LIVE)))
    if experiments is not None:
        query = query.where(col(ResourceRow.experiment).in_(sorted(experiments)))
    units: Counter[tuple[str, str, str]] = Counter()
    cores: Counter[tuple[str, str, str]] = Counter()
    money: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    with Session(db) as session:
        history = StoredSpotPrices(session)
        for r in session.exec(query):
            key = (r.backend, r.market, r.state)
            units[key] += 1
            cores[key] += r.cores
            money[key] += from_micro(price_in_force(r, now, history))
    return [FleetLine(*key, units[key], cores[key], money[key]) for key in sorted(units)]


def live_units(db: Engine, experiments: frozenset[str] | None, limit: int = 200) -> list[ResourceRow]:
    query = select(ResourceRow).where(col(ResourceRow.state).in_(sorted(LIVE)))
    if experiments is not None:
        query = query.where(col(ResourceRow.experiment).in_(sorted(experiments)))
    with Session(db, expire_on_commit=False) as session:
        return list(session.exec(query.order_by(col(ResourceRow.created_at).desc()).limit(limit)))


@dataclass(frozen=True)
class DecisionView:
    plan_id: str
    made_at: datetime
    policy_version: int | None
    group_id: str
    experiment: str
    offering_id: str | None
    units: int
    cost_usd: Decimal
    cost_per_hs23_hour: str | None
    unserved_jobs: int
    note: str
    rejected: list[dict[str, Any]]


def decisions(db: Engine, experiments: frozenset[str] | None, plans: int = 3) -> list[DecisionView]:
    """The decisions of the most recent plans, each with its explanation and best rejected alternatives."""
    with Session(db) as session:
        recent = list(session.exec(select(PlanRow).order_by(col(PlanRow.created_at).desc()).limit(plans)))
        by_id = {p.id: p for p in recent}
        rows = session.exec(
            select(DecisionRow).where(col(DecisionRow.plan_id).in_(list(by_id))).order_by(col(DecisionRow.id))
        )
        out = []
        for d in rows:
            if experiments is not None and d.experiment not in experiments:
                continue
            plan = by_id[d.plan_id]
            out.append(
                DecisionView(
                    plan_id=d.plan_id,
                    made_at=row_time(plan.created_at) or plan.created_at,
                    policy_version=plan.policy_version,
                    group_id=d.group_id,
                    experiment=d.experiment,
                    offering_id=d.offering_id,
                    units=d.units,
                    cost_usd=from_micro(d.cost_micro),
                    cost_per_hs23_hour=d.cost_per_hs23_hour,
                    unserved_jobs=d.unserved_jobs,
                    note=str(d.explanation.get("note", "")),
                    rejected=list(d.explanation.get("rejected", []))[:3],
                )
            )
    out.sort(key=lambda v: (v.made_at, v.plan_id), reverse=True)
    return out


@dataclass(frozen=True)
class BreakerView:
    key: str
    open: bool
    failures: int
    open_until: datetime | None
    last_error: str | None


def breakers(db: Engine, now: datetime) -> list[BreakerView]:
    with Session(db) as session:
        rows = list(session.exec(select(OfferingHealthRow).order_by(col(OfferingHealthRow.key))))
    out = []
    for r in rows:
        until = row_time(r.open_until)
        out.append(BreakerView(r.key, until is not None and until > now, r.consecutive_failures, until, r.last_error))
    return out


@dataclass(frozen=True)
class AllocationView:
    name: str
    backend: str
    granted: float
    used: float
    target: float  # the even burn line: granted × elapsed fraction
    lead: float
    paced: bool
    ends: datetime


def allocations(policy: policies.Policy, now: datetime) -> list[AllocationView]:
    out = []
    for o in policies.site_offerings(policy):
        info = o.allocation
        if info is None or o.market != Market.ALLOCATION:
            continue
        status = policies.pacing_status(info, now, Decimal(0))
        out.append(
            AllocationView(
                info.name, o.backend, info.node_hours_granted, info.node_hours_used, status.target_used,
                status.lead, status.paced, info.ends,
            )
        )
    return out


@dataclass(frozen=True)
class RequestView:
    id: str
    experiment: str
    status: str
    reason: str
    spec: dict[str, Any]
    created_at: datetime
    live_units: int
    units: int
    cost_usd: Decimal
    cancellable: bool


def requests(db: Engine, experiments: frozenset[str] | None, now: datetime, limit: int = 100) -> list[RequestView]:
    query = select(BurstRequestRow)
    if experiments is not None:
        query = query.where(col(BurstRequestRow.experiment).in_(sorted(experiments)))
    with Session(db, expire_on_commit=False) as session:
        rows = list(session.exec(query.order_by(col(BurstRequestRow.created_at).desc()).limit(limit)))
        by_request = request_resources(session, [r.id for r in rows])
        costs = {r.id: cost_of_resources(session, by_request[r.id], now) for r in rows}
    return [
        RequestView(
            id=r.id,
            experiment=r.experiment,
            status=r.status,
            reason=r.reason,
            spec=r.spec,
            created_at=row_time(r.created_at) or r.created_at,
            live_units=sum(1 for x in by_request[r.id] if x.state in LIVE),
            units=len(by_request[r.id]),
            cost_usd=costs[r.id],
            cancellable=r.status in RequestStatus.OPEN,
        )
        for r in rows
    ]

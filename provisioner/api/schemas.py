"""The API's response models (pydantic) and their conversion from domain objects and table rows.

Money is a Decimal, sent as a JSON string so no client rounds it through a float.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from provisioner.domain import (
    CostBreakdown,
    DrainOrder,
    GroupExplanation,
    Offering,
    Plan,
    PlanItem,
    Rejection,
)
from provisioner.model import DecisionRow, EventRow, PlanRow, ResourceRow, from_micro, row_time


def _when(value: datetime | None) -> datetime | None:
    return row_time(value)


class ErrorOut(BaseModel):
    detail: str


class ValidationErrorOut(BaseModel):
    """A 422: `message` names every bad field; `detail` lists them (loc, msg, type, input)."""

    message: str
    detail: list[dict[str, Any]]


class CostBreakdownOut(BaseModel):
    """USD per HS23-hour of useful work, and where it comes from."""

    compute: Decimal
    interruption: Decimal
    egress: Decimal
    startup: Decimal
    allocation_value: Decimal
    total: Decimal

    @classmethod
    def of(cls, c: CostBreakdown) -> CostBreakdownOut:
        return cls(
            compute=c.compute,
            interruption=c.interruption,
            egress=c.egress,
            startup=c.startup,
            allocation_value=c.allocation_value,
            total=c.total,
        )


class PlanItemOut(BaseModel):
    group_id: str
    offering_id: str
    units: int
    jobs: int
    hours: float
    cost_usd: Decimal
    cost_per_hs23_hour: CostBreakdownOut

    @classmethod
    def of(cls, item: PlanItem) -> PlanItemOut:
        return cls(
            group_id=item.group_id,
            offering_id=item.offering_id,
            units=item.units,
            jobs=item.jobs,
            hours=item.hours,
            cost_usd=item.cost,
            cost_per_hs23_hour=CostBreakdownOut.of(item.cost_per_hs23_hour),
        )


class RejectionOut(BaseModel):
    offering_id: str
    reason: str
    cost_per_hs23_hour_usd: Decimal | None
    detail: str

    @classmethod
    def of(cls, r: Rejection) -> RejectionOut:
        return cls(
            offering_id=r.offering_id,
            reason=r.reason.value,
            cost_per_hs23_hour_usd=r.cost_per_hs23_hour,
            detail=r.detail,
        )


class ExplanationOut(BaseModel):
    """Per demand group: what was chosen, at what cost per HS23-hour, and the best alternatives rejected."""

    group_id: str
    experiment: str
    chosen: list[PlanItemOut]
    rejected: list[RejectionOut]
    unserved_jobs: int
    unserved_reason: str | None
    note: str

    @classmethod
    def of(cls, e: GroupExplanation, *, alternatives: int) -> ExplanationOut:
        return cls(
            group_id=e.group_id,
            experiment=e.experiment,
            chosen=[PlanItemOut.of(i) for i in e.chosen],
            rejected=[RejectionOut.of(r) for r in e.rejected[:alternatives]],
            unserved_jobs=e.unserved_jobs,
            unserved_reason=e.unserved_reason.value if e.unserved_reason else None,
            note=e.note,
        )


class DrainOut(BaseModel):
    resource_id: str
    reason: str
    detail: str

    @classmethod
    def of(cls, d: DrainOrder) -> DrainOut:
        return cls(resource_id=d.resource_id, reason=d.reason.value, detail=d.detail)


class PlanOut(BaseModel):
    """What the engine would do now (a dry run: nothing is started, drained or stored)."""

    dry_run: bool
    started_at: datetime
    solver: str
    pending_jobs: int
    demand_groups: int
    offerings_considered: int
    total_cost_usd: Decimal
    spend_rate_usd_per_hour: Decimal
    items: list[PlanItemOut]
    explanations: list[ExplanationOut]
    drains: list[DrainOut]
    errors: dict[str, str]  # "<source or backend>:<step>" -> message

    @classmethod
    def of(
        cls,
        plan: Plan,
        *,
        started_at: datetime,
        pending_jobs: int,
        groups: int,
        offerings: int,
        errors: dict[str, str],
        alternatives: int,
    ) -> PlanOut:
        return cls(
            dry_run=True,
            started_at=started_at,
            solver=plan.solver,
            pending_jobs=pending_jobs,
            demand_groups=groups,
            offerings_considered=offerings,
            total_cost_usd=plan.total_cost,
            spend_rate_usd_per_hour=plan.spend_rate_per_hour,
            items=[PlanItemOut.of(i) for i in plan.items],
            explanations=[ExplanationOut.of(e, alternatives=alternatives) for e in plan.explanations],
            drains=[DrainOut.of(d) for d in plan.drains],
            errors=errors,
        )


class OfferingOut(BaseModel):
    id: str
    backend: str
    provider: str
    region: str
    zone: str | None
    instance_type: str
    family: str
    market: str
    arch: str
    cores: int
    memory_gb: float
    gpu_model: str | None
    gpu_count: int
    hs23_per_core: float
    price_per_hour_usd: Decimal
    interruption_rate_per_hour: float
    startup_seconds: int
    max_walltime_hours: float | None
    capacity_units: int | None

    @classmethod
    def of(cls, o: Offering) -> OfferingOut:
        return cls(
            id=o.id,
            backend=o.backend,
            provider=o.provider,
            region=o.region,
            zone=o.zone,
            instance_type=o.instance_type,
            family=o.family,
            market=o.market.value,
            arch=o.arch.value,
            cores=o.cores,
            memory_gb=o.memory_gb,
            gpu_model=o.gpu_model,
            gpu_count=o.gpu_count,
            hs23_per_core=o.hs23_per_core,
            price_per_hour_usd=o.price_per_hour,
            interruption_rate_per_hour=o.interruption_rate_per_hour,
            startup_seconds=o.startup_seconds,
            max_walltime_hours=o.max_walltime_hours,
            capacity_units=o.capacity_units,
        )


class OfferingsOut(BaseModel):
    matched: int  # offerings matching the filters; `offerings` holds the first `limit`, cheapest first
    offerings: list[OfferingOut]


class ResourceOut(BaseModel):
    id: str
    backend: str
    offering_id: str
    market: str
    state: str
    experiment: str | None
    group_id: str | None
    request_id: str | None
    provider_id: str | None
    cores: int
    gpus: int
    price_per_hour_usd: Decimal
    busy: bool
    failure_reason: str | None
    created_at: datetime
    state_since: datetime
    launched_at: datetime | None
    released_at: datetime | None

    @classmethod
    def of(cls, r: ResourceRow) -> ResourceOut:
        return cls(
            id=r.id,
            backend=r.backend,
            offering_id=r.offering_id,
            market=r.market,
            state=r.state,
            experiment=r.experiment,
            group_id=r.group_id,
            request_id=r.request_id,
            provider_id=r.provider_id,
            cores=r.cores,
            gpus=r.gpus,
            # the price recorded when it was created (what the plan chose it at); money spent on it
            # is the billing model's, at the price in force (`accounting.billing`)
            price_per_hour_usd=from_micro(r.price_micro_per_hour),
            busy=r.busy,
            failure_reason=r.failure_reason,
            created_at=_when(r.created_at) or r.created_at,
            state_since=_when(r.state_since) or r.state_since,
            launched_at=_when(r.launched_at),
            released_at=_when(r.released_at),
        )


class RequestCreatedOut(BaseModel):
    id: str
    experiment: str
    status: str  # admitted | rejected
    reason: str
    estimated_cost_usd: Decimal
    offerings: list[str]  # the offerings the estimate places the request on


class RequestOut(BaseModel):
    id: str
    experiment: str
    status: str
    ended_by: str | None = None  # done: delivered | held | duration | deadline | max_cost
    reason: str
    spec: dict[str, Any]
    max_cost_usd: Decimal | None
    cost_so_far_usd: Decimal
    live_resources: int
    created_at: datetime
    updated_at: datetime
    resources: list[ResourceOut]


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    subject: str
    payload: dict[str, Any]

    @classmethod
    def of(cls, e: EventRow) -> EventOut:
        assert e.id is not None
        return cls(id=e.id, at=_when(e.at) or e.at, kind=e.kind, subject=e.subject, payload=e.payload)


class DecisionOut(BaseModel):
    group_id: str
    experiment: str
    offering_id: str | None
    units: int
    jobs: int
    cost_usd: Decimal
    cost_per_hs23_hour_usd: Decimal | None
    unserved_jobs: int
    explanation: dict[str, Any]

    @classmethod
    def of(cls, d: DecisionRow) -> DecisionOut:
        return cls(
            group_id=d.group_id,
            experiment=d.experiment,
            offering_id=d.offering_id,
            units=d.units,
            jobs=d.jobs,
            cost_usd=from_micro(d.cost_micro),
            cost_per_hs23_hour_usd=Decimal(d.cost_per_hs23_hour) if d.cost_per_hs23_hour else None,
            unserved_jobs=d.unserved_jobs,
            explanation=d.explanation,
        )


class StoredPlanOut(BaseModel):
    id: str
    created_at: datetime
    solver: str
    policy_version: int | None  # the policy version in force when it was made (GET /v1/policy/versions/N)
    total_cost_usd: Decimal
    spend_rate_usd_per_hour: Decimal
    summary: dict[str, Any]
    decisions: list[DecisionOut]

    @classmethod
    def of(cls, p: PlanRow, decisions: list[DecisionRow]) -> StoredPlanOut:
        return cls(
            id=p.id,
            created_at=_when(p.created_at) or p.created_at,
            solver=p.solver,
            policy_version=p.policy_version,
            total_cost_usd=from_micro(p.total_cost_micro),
            spend_rate_usd_per_hour=from_micro(p.spend_rate_micro_per_hour),
            summary=p.summary,
            decisions=[DecisionOut.of(d) for d in decisions],
        )


class HealthOut(BaseModel):
    status: str
    database: str

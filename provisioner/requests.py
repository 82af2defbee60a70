"""Burst requests: an experiment asks for capacity; it is admitted against the policies or rejected, with a reason.

An admitted request becomes one demand group (source "request") that the engine plans like any other
pending work; its status and cost so far are read back from the resources it got.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Engine
from sqlmodel import Session, col, or_, select

from accounting.billing import PriceHistory, UnitFacts, events_for, priced_facts, spent_micro
from accounting.spot_prices import StoredSpotPrices
from provisioner.domain import (
    LIVE_STATES,
    Arch,
    DemandGroup,
    FleetUnit,
    Offering,
    Plan,
    PlanItem,
    PlanningConstraints,
    ResourceState,
)
from provisioner.ids import IdSource, RandomIds
from provisioner.ids import request_id as make_request_id
from provisioner.model import (
    MICRO,
    BurstRequestRow,
    EventRow,
    ResourceRow,
    row_time,
    to_micro,
    utcnow,
)

PlanFunction = Callable[
    [Sequence[DemandGroup], Sequence[Offering], Sequence[FleetUnit], PlanningConstraints], Plan
]

CONCURRENCY_SLACK = timedelta(hours=1)  # boot and queue time a duration request may wait for its slots

# Bounds on every number and text of a request: what no real request exceeds, so nothing downstream
# (planner, money, storage) ever sees an infinity, an overflow or a megabyte name.
MIN_HOURS = 1 / 60  # a minute
MAX_HOURS = 24 * 366  # a year
MAX_SLOTS = 1_000_000  # job slots one request may ask for
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _at_least_a_minute(hours: float) -> float:
    if hours < MIN_HOURS:
        raise ValueError(f"must be at least a minute ({MIN_HOURS:.4f} h), got {hours:g}")
    return hours


Hours = Annotated[float, Field(le=MAX_HOURS, allow_inf_nan=False), AfterValidator(_at_least_a_minute)]
Gigabytes = Annotated[float, Field(ge=0, le=1e8, allow_inf_nan=False)]


class RequestStatus:
    ADMITTED = "admitted"
    REJECTED = "rejected"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    OPEN = frozenset({ADMITTED, RUNNING})


class BurstRequestSpec(BaseModel):
    """What an experiment asks for. Exactly one of cores/gpus, and one of duration_hours/hs23_hours.

    `duration_hours` with `keep_shape`: hold exactly these cores (or GPUs) for that long, or refuse.
    Without `keep_shape` the same HS23-hours may run on fewer, faster cores, and admission says how.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    cores: int | None = Field(default=None, gt=0, le=10_000_000)
    gpus: int | None = Field(default=None, gt=0, le=1_000_000)
    gpu_model: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN)
    archs: tuple[Arch, ...] = Field(default=(Arch.X86_64,), max_length=len(Arch))
    duration_hours: Hours | None = None
    hs23_hours: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)] | None = None
    deadline: datetime | None = None
    data_location: str | None = Field(default=None, max_length=128)
    input_gb: Gigabytes = 0.0
    output_gb: Gigabytes = 0.0
    max_cost_usd: Decimal | None = Field(
        default=None, gt=0, le=Decimal(10) ** 9, allow_inf_nan=False, decimal_places=6
    )
    cores_per_job: int = Field(default=8, gt=0, le=4096)
    cores_per_gpu: int = Field(default=8, gt=0, le=1024)
    memory_gb_per_core: float = Field(default=2.0, gt=0, le=4096, allow_inf_nan=False)
    job_hours: Hours = 12.0  # slot length when only hs23_hours is given
    preemptible: bool = False
    keep_shape: bool = False  # duration requests: exactly these cores for exactly this long, or refuse

    @field_validator("archs")
    @classmethod
    def _archs_not_empty(cls, value: tuple[Arch, ...]) -> tuple[Arch, ...]:
        if not value:
            raise ValueError("name at least one architecture (x86_64, arm64)")
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline_has_zone(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("data_location")
    @classmethod
    def _location_shape(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError(f"'{value}' is not '<provider>:<region>' (e.g. aws:us-east-1)")
        return value

    @model_validator(mode="after")
    def _one_size_one_length(self) -> Self:
        if (self.cores is None) == (self.gpus is None):
            raise ValueError("give exactly one of cores or gpus")
        if (self.duration_hours is None) == (self.hs23_hours is None):
            raise ValueError("give exactly one of duration_hours or hs23_hours")
        if self.gpu_model is not None and self.gpus is None:
            raise ValueError("gpu_model needs gpus")
        if self.cores is not None and self.cores % self.cores_per_job:
            raise ValueError(
                f"cores ({self.cores}) must be a multiple of cores_per_job ({self.cores_per_job})"
            )
        if self.keep_shape and self.duration_hours is None:
            raise ValueError("keep_shape needs duration_hours (an HS23-hours request has no shape to keep)")
        if self.hs23_hours is not None:
            per_slot = (
                (self.cores_per_job if self.gpus is None else self.cores_per_gpu) * self.job_hours * 10.0
            )
            if self.hs23_hours / per_slot > MAX_SLOTS:
                raise ValueError(
                    f"hs23_hours: {self.hs23_hours:g} HS23-hours is more than {MAX_SLOTS:,} job slots of"
                    f" {per_slot:g}; ask for less, or raise job_hours or cores_per_job"
                )
        if self.cores is not None and self.cores // self.cores_per_job > MAX_SLOTS:
            raise ValueError(f"cores: more than {MAX_SLOTS:,} job slots; raise cores_per_job")
        return self


@dataclass(frozen=True, slots=True)
class Admission:
    accepted: bool
    reason: str
    estimated_cost: Decimal
    group: DemandGroup
    plan: Plan | None = None


def demand_group_for(
    request_id: str,
    spec: BurstRequestSpec,
    *,
    admitted_at: datetime | None = None,
    reference_hs23_per_core: float = 10.0,
) -> DemandGroup:
    """The request as pending work: slots of `cores_per_job` cores (or one GPU each) for the duration.

    A request for N cores for a duration wants them at the same time, not one after another: its
    deadline is the duration plus boot slack from admission (or the request's own, if earlier), so
    the planner cannot stretch it into successive waves on fewer units.
    """
    if spec.gpus is not None:
        jobs, cores_per_job, gpus_per_job = spec.gpus, spec.cores_per_gpu, 1
    else:
        assert spec.cores is not None
        jobs, cores_per_job, gpus_per_job = spec.cores // spec.cores_per_job, spec.cores_per_job, 0
    if spec.duration_hours is not None:
        walltime = spec.duration_hours
    else:
        assert spec.hs23_hours is not None
        walltime = spec.job_hours
        per_slot = cores_per_job * walltime * reference_hs23_per_core
        jobs = max(1, math.ceil(spec.hs23_hours / per_slot))
    deadline = spec.deadline
    if spec.duration_hours is not None and admitted_at is not None:
        concurrent = admitted_at + timedelta(hours=spec.duration_hours) + CONCURRENCY_SLACK
        deadline = min(deadline, concurrent) if deadline is not None else concurrent
    return DemandGroup(
        id=f"request:{request_id}",
        experiment=spec.experiment,
        jobs=jobs,
        cores_per_job=cores_per_job,
        memory_gb_per_job=cores_per_job * spec.memory_gb_per_core,
        walltime_hours=walltime,
        archs=frozenset(spec.archs),
        gpus_per_job=gpus_per_job,
        gpu_model=spec.gpu_model,
        input_gb_per_job=spec.input_gb / jobs,
        output_gb_per_job=spec.output_gb / jobs,
        data_location=spec.data_location,
        preemptible=spec.preemptible,
        deadline=deadline,
        request_id=request_id,
        source="request",
        reference_hs23_per_core=reference_hs23_per_core,
    )


def _policy_refusal(spec: BurstRequestSpec, constraints: PlanningConstraints, now: datetime) -> str | None:
    """Reasons the policies forbid the request outright, before any costing."""
    closed = constraints.only_named_experiments or bool(constraints.experiments)
    if closed and spec.experiment not in constraints.experiments:
        known = ", ".join(sorted(constraints.experiments)) or "none"
        return f"experiment: '{spec.experiment}' is not in the policy, and an experiment it does not name gets nothing (known: {known})"
    limits = constraints.experiments.get(spec.experiment)
    if spec.deadline is not None:
        if spec.deadline <= now:
            return f"deadline {spec.deadline:%Y-%m-%d %H:%M} UTC is in the past"
        if spec.duration_hours is not None and now + timedelta(hours=spec.duration_hours) > spec.deadline:
            return f"{spec.duration_hours:g} h of work cannot finish before the deadline {spec.deadline:%Y-%m-%d %H:%M}"
    if limits is None:
        return None
    if limits.allowed_archs is not None and not set(spec.archs) & limits.allowed_archs:
        allowed = ", ".join(sorted(limits.allowed_archs))
        return f"architecture {', '.join(spec.archs)} not allowed for {spec.experiment} (allowed: {allowed})"
    if spec.gpus is not None:
        if limits.max_gpus is not None and spec.gpus > limits.max_gpus:
            return f"{spec.gpus} GPUs asked, the policy allows {spec.experiment} at most {limits.max_gpus}"
        if (
            spec.gpu_model is not None
            and limits.allowed_gpu_models is not None
            and spec.gpu_model not in limits.allowed_gpu_models
        ):
            allowed = ", ".join(sorted(limits.allowed_gpu_models))
            return f"GPU model {spec.gpu_model} not allowed for {spec.experiment} (allowed: {allowed})"
    if limits.budget_remaining is not None and limits.budget_remaining <= 0:
        return f"budget of {spec.experiment} for this period is used up"
    return None


def admit(
    request_id: str,
    spec: BurstRequestSpec,
    *,
    constraints: PlanningConstraints,
    offerings: Sequence[Offering],
    fleet: Sequence[FleetUnit],
    plan_fn: PlanFunction,
    now: datetime,
) -> Admission:
    """Accept or reject with a reason. The cost estimate is the planner's own plan for this request alone."""
    group = demand_group_for(request_id, spec, admitted_at=now)
    refusal = _policy_refusal(spec, constraints, now)
    if refusal is not None:
        return Admission(False, refusal, Decimal(0), group)
    plan = plan_fn([group], offerings, fleet, constraints)
    explanation = next((e for e in plan.explanations if e.group_id == group.id), None)
    served = sum(item.jobs for item in plan.items if item.group_id == group.id)
    cost = sum((item.cost for item in plan.items if item.group_id == group.id), Decimal(0))
    if served < group.jobs:
        why = (
            explanation.unserved_reason.value
            if explanation and explanation.unserved_reason
            else "no capacity"
        )
        detail = f" ({explanation.note})" if explanation and explanation.note else ""
        return Admission(
            False,
            f"only {served} of {group.jobs} slots can be placed now: {why}{detail}",
            cost,
            group,
            plan,
        )
    if spec.max_cost_usd is not None and cost > spec.max_cost_usd:
        return Admission(
            False,
            f"estimated cost ${cost:,.2f} exceeds the request's maximum ${spec.max_cost_usd:,.2f}",
            cost,
            group,
            plan,
        )
    items = [item for item in plan.items if item.group_id == group.id]
    keeps, note = _shape(spec, group, items, {o.id: o for o in offerings})
    if not keeps:
        return Admission(False, note, cost, group, plan)
    chosen = ", ".join(sorted({item.offering_id for item in items}))
    return Admission(
        True, f"estimated ${cost:,.2f} on {chosen}" + (f"; {note}" if note else ""), cost, group, plan
    )


def _shape(
    spec: BurstRequestSpec, group: DemandGroup, items: Sequence[PlanItem], offerings: Mapping[str, Offering]
) -> tuple[bool, str]:
    """Does the plan hold what a duration request asked (its cores at once, for its duration)? If not,
    say what it gives instead; refuse only when the request keeps its shape."""
    if spec.duration_hours is None or not items:
        return True, ""
    per_job = group.gpus_per_job or group.cores_per_job
    slots, hours = 0, 0.0
    for item in items:
        o = offerings.get(item.offering_id)
        if o is None:
            per_unit = max(1, item.jobs // max(1, item.units))
        elif group.gpus_per_job:
            per_unit = max(1, o.gpu_count // group.gpus_per_job)
        else:
            per_unit = max(1, o.cores // group.cores_per_job)
        slots += min(item.jobs, item.units * per_unit)
        hours = max(hours, item.hours)
    if slots >= group.jobs and abs(hours - spec.duration_hours) <= 0.01 * spec.duration_hours:
        return True, ""
    unit = "GPUs" if spec.gpus is not None else "cores"
    note = (
        f"planned as {slots * per_job:,} {unit} for {hours:.1f} h, not {group.jobs * per_job:,} {unit} for"
        f" {spec.duration_hours:g} h (the same {group.hs23_hours:,.0f} HS23-hours on cores of another speed)"
    )
    if spec.keep_shape:
        return False, f"keep_shape: {note}; ask without keep_shape, or in hs23_hours, to accept that"
    return True, f"{note}; set keep_shape to refuse a reshaped plan"


def new_request_id(ids: IdSource | None = None) -> str:
    return make_request_id(ids or RandomIds())


def record_admission(
    engine: Engine,
    request_id: str,
    spec: BurstRequestSpec,
    admission: Admission,
    *,
    now: datetime | None = None,
) -> BurstRequestRow:
    """Store the request and an event in one transaction; `now` must be the admission's time."""
    now = now or utcnow()
    row = BurstRequestRow(
        id=request_id,
        experiment=spec.experiment,
        status=RequestStatus.ADMITTED if admission.accepted else RequestStatus.REJECTED,
        reason=admission.reason,
        spec=spec.model_dump(mode="json"),
        max_cost_micro=to_micro(spec.max_cost_usd) if spec.max_cost_usd is not None else None,
        created_at=now,
        updated_at=now,
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(row)
        session.add(
            EventRow(
                at=now,
                kind="request.admitted" if admission.accepted else "request.rejected",
                subject=request_id,
                payload={
                    "experiment": spec.experiment,
                    "reason": admission.reason,
                    "estimated_cost": str(admission.estimated_cost),
                },
            )
        )
        session.commit()
    return row


class RequestNotFound(LookupError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no burst request with id '{request_id}'")


def cancel(engine: Engine, request_id: str) -> BurstRequestRow:
    """Cancel a request: its demand disappears, so the engine drains what it got (no jobs, no cost)."""
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(BurstRequestRow, request_id)
        if row is None:
            raise RequestNotFound(request_id)
        if row.status in RequestStatus.OPEN:
            now = utcnow()
            row.status = RequestStatus.CANCELLED
            row.updated_at = now
            session.add(EventRow(at=now, kind="request.cancelled", subject=request_id, payload={}))
            session.commit()
        return row


@dataclass(frozen=True, slots=True)
class RequestView:
    row: BurstRequestRow
    cost_so_far: Decimal
    live_resources: int
    resources: int


def request_resources(session: Session, request_ids: Sequence[str]) -> dict[str, list[ResourceRow]]:
    """Resources started for each request: tagged with its id, or serving its demand group
    (`request:<id>`), in creation order. Every view of a request's cost reads this set."""
    out: dict[str, list[ResourceRow]] = {rid: [] for rid in request_ids}
    groups = {f"request:{rid}": rid for rid in request_ids}
    for i in range(0, len(request_ids), 500):
        chunk = list(request_ids[i : i + 500])
        query = select(ResourceRow).where(
            or_(col(ResourceRow.request_id).in_(chunk), col(ResourceRow.group_id).in_([f"request:{r}" for r in chunk]))
        )
        for res in session.exec(query.order_by(col(ResourceRow.created_at), col(ResourceRow.id))):
            owner = res.request_id if res.request_id in out else groups.get(str(res.group_id))
            if owner is not None:
                out[owner].append(res)
    return out


def request_units(
    session: Session, resources: Sequence[ResourceRow], now: datetime, *, prices: PriceHistory | None = None
) -> list[UnitFacts]:
    """The billing model's facts of these resources (events read from `session`), at the price in
    force over their run: the stored spot price history in the zone used (`prices` overrides it)."""
    events = events_for(session, [r.id for r in resources])
    history = prices if prices is not None else StoredSpotPrices(session)
    return [priced_facts(r, events.get(r.id, ()), as_of=now, prices=history) for r in resources]


def cost_of_units(units: Sequence[UnitFacts], now: datetime) -> Decimal:
    """Money spent so far, as the billing model bills it (`accounting.billing`): from launch to stop
    at the price in force; a create that never launched costs nothing. Rounded to the cent once."""
    micro = spent_micro(units, datetime.min.replace(tzinfo=UTC), now, as_of=now)
    return (Decimal(micro) / MICRO).quantize(Decimal("0.01"))


def cost_of_resources(session: Session, resources: Sequence[ResourceRow], now: datetime) -> Decimal:
    """`cost_of_units` of these resources, read from `session` (events and spot price history)."""
    return cost_of_units(request_units(session, resources, now), now)


def _view(session: Session, row: BurstRequestRow, resources: Sequence[ResourceRow], now: datetime) -> RequestView:
    live = sum(1 for r in resources if ResourceState(r.state) in LIVE_STATES)
    return RequestView(row, cost_of_resources(session, resources, now), live, len(resources))


def view(engine: Engine, request_id: str, *, now: datetime | None = None) -> RequestView:
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(BurstRequestRow, request_id)
        if row is None:
            raise RequestNotFound(request_id)
        resources = request_resources(session, [request_id])[request_id]
        return _view(session, row, resources, now or utcnow())


def list_requests(
    engine: Engine, *, experiment: str | None = None, now: datetime | None = None
) -> list[RequestView]:
    """All requests, newest first, with their resources read in one query (not one per request)."""
    with Session(engine, expire_on_commit=False) as session:
        query = select(BurstRequestRow).order_by(col(BurstRequestRow.created_at).desc())
        if experiment:
            query = query.where(BurstRequestRow.experiment == experiment)
        rows = list(session.exec(query))
        by_request = request_resources(session, [r.id for r in rows])
        at = now or utcnow()
        return [_view(session, row, by_request[row.id], at) for row in rows]


def load_request_groups(engine: Engine) -> list[DemandGroup]:
    """Demand from open requests, for the engine's observe step: rebuilt from each request as admitted."""
    with Session(engine, expire_on_commit=False) as session:
        rows = list(
            session.exec(select(BurstRequestRow).where(col(BurstRequestRow.status).in_(RequestStatus.OPEN)))
        )
    return [
        demand_group_for(r.id, BurstRequestSpec.model_validate(r.spec), admitted_at=row_time(r.created_at))
        for r in rows
    ]

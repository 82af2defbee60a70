"""The broker's tables (sqlmodel): demand, policies, plans and decisions, resources, events, accounting.

Money is stored as integer micro-dollars (`*_micro` columns) so sums are exact in SQL.
Times are UTC. Schema changes go through Alembic (`provisioner/migrations`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

MICRO = Decimal(1_000_000)


def to_micro(usd: Decimal) -> int:
    return int((usd * MICRO).to_integral_value())


def from_micro(micro: int) -> Decimal:
    return Decimal(micro) / MICRO


def utcnow() -> datetime:
    return datetime.now(UTC)


class DemandGroupRow(SQLModel, table=True):
    __tablename__ = "demand_groups"

    id: str = Field(primary_key=True)
    experiment: str = Field(index=True)
    source: str
    jobs: int
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # DemandGroup fields
    request_id: str | None = Field(default=None, index=True)
    observed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class BurstRequestRow(SQLModel, table=True):
    __tablename__ = "burst_requests"

    id: str = Field(primary_key=True)
    experiment: str = Field(index=True)
    status: str = Field(index=True)  # pending | admitted | rejected | running | done | cancelled
    reason: str = ""
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    max_cost_micro: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    cost_so_far_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    # which rule ended it (done): delivered | held | duration | deadline | max_cost; None while open
    ended_by: str | None = None
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PolicyRow(SQLModel, table=True):
    """Each policy document applied, kept whole so every decision can name the policy in force."""

    __tablename__ = "policies"

    id: int | None = Field(default=None, primary_key=True)  # the policy version
    name: str
    sha256: str = Field(index=True)
    content: str
    applied_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    author: str = ""  # "file:<path>" when read from the policy file at start, else the API caller
    comment: str = ""


class PlanRow(SQLModel, table=True):
    __tablename__ = "plans"

    id: str = Field(primary_key=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    solver: str
    policy_sha256: str | None = None
    policy_version: int | None = None  # the PolicyRow in force when the plan was made
    total_cost_micro: int = Field(sa_column=Column(BigInteger, nullable=False))
    spend_rate_micro_per_hour: int = Field(sa_column=Column(BigInteger, nullable=False))
    dry_run: bool = False
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class DecisionRow(SQLModel, table=True):
    """One demand group's outcome in one plan, with its explanation."""

    __tablename__ = "decisions"

    id: int | None = Field(default=None, primary_key=True)
    plan_id: str = Field(foreign_key="plans.id", index=True)
    group_id: str = Field(index=True)
    experiment: str
    offering_id: str | None = None
    units: int = 0
    jobs: int = 0
    cost_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    cost_per_hs23_hour: str | None = None  # Decimal as text: exact, and readable in SQL
    unserved_jobs: int = 0
    explanation: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ResourceRow(SQLModel, table=True):
    """One unit of capacity through its lifecycle. The row exists before the backend call is made."""

    __tablename__ = "resources"
    __table_args__ = (
        UniqueConstraint("idempotency_token", name="uq_resources_token"),
        Index("ix_resources_backend_state", "backend", "state"),
    )

    id: str = Field(primary_key=True)
    backend: str
    offering_id: str = Field(index=True)
    market: str
    group_id: str | None = Field(default=None, index=True)
    experiment: str | None = Field(default=None, index=True)
    request_id: str | None = Field(default=None, index=True)
    state: str = Field(index=True)
    idempotency_token: str
    provider_id: str | None = Field(default=None, index=True)
    price_micro_per_hour: int = Field(sa_column=Column(BigInteger, nullable=False))
    cores: int = 0
    gpus: int = 0
    hs23_per_core: float = 0.0
    walltime_hours: float | None = None
    attempts: int = 0
    failure_reason: str | None = None
    busy: bool = False
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    state_since: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    launched_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    zone: str | None = None  # availability zone the provider put it in (spot prices differ by zone)
    idle_since: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    # Last heartbeat from the work on the unit (pilot/worker, on the bus or the API): `busy` is
    # what it said. A unit with no fresh heartbeat and no busy view from its backend has no signal.
    heartbeat_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    released_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class EventRow(SQLModel, table=True):
    """Every state change, stored; also published on the bus."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    kind: str = Field(index=True)  # e.g. resource.state, plan.created, request.admitted
    subject: str = Field(index=True)  # id of the thing it is about
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class OfferingHealthRow(SQLModel, table=True):
    """Circuit-breaker state per backend or offering, persisted so a restart does not forget it."""

    __tablename__ = "offering_health"

    key: str = Field(primary_key=True)  # "backend:<name>" or "offering:<id>"
    consecutive_failures: int = 0
    open_until: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    last_error: str | None = None
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class LeaderLeaseRow(SQLModel, table=True):
    """Who leads a broker's replicas: the epoch (fencing token, +1 per take-over) and the lease."""

    __tablename__ = "leader_lease"

    broker_id: str = Field(primary_key=True)
    epoch: int = Field(sa_column=Column(BigInteger, nullable=False))
    holder_pid: int | None = None  # the PostgreSQL backend pid holding the advisory lock
    renewed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class UsageRecordRow(SQLModel, table=True):
    """Usage of one resource (VM, pilot, backfill job) or one job on it, ready for accounting."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("record_key", name="uq_usage_record_key"),
        Index("ix_usage_end_time", "end_time"),
    )

    id: int | None = Field(default=None, primary_key=True)
    record_key: str  # stable id: "<site>:<resource or job id>" so re-import is idempotent
    kind: str  # vm | pilot | backfill | job
    resource_id: str | None = Field(default=None, index=True)
    local_job_id: str | None = None
    experiment: str = Field(index=True)  # VO
    fqan: str | None = None
    global_user_name: str | None = None
    site: str
    submit_host: str
    backend: str
    offering_id: str | None = None
    offering_family: str | None = None
    market: str | None = None
    infrastructure: str | None = None
    start_time: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    end_time: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    wall_seconds: int = 0
    cpu_seconds: int | None = None  # None: not measured (the broker's own records of its fleet)
    cores: int = 1
    nodes: int = 1
    memory_kb: int | None = None
    gpu_model: str | None = None
    gpu_count: int = 0
    hs23_per_core: float | None = None
    status: str = "completed"
    cloud_image_id: str | None = None
    cloud_type: str | None = None


class CostLedgerRow(SQLModel, table=True):
    """Money per resource per hour, split by kind (compute, egress, idle)."""

    __tablename__ = "cost_ledger"
    __table_args__ = (
        UniqueConstraint("resource_id", "hour", "kind", name="uq_ledger_resource_hour_kind"),
        Index("ix_ledger_hour", "hour"),
    )

    id: int | None = Field(default=None, primary_key=True)
    resource_id: str
    hour: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    kind: str  # compute | egress | idle
    experiment: str = Field(index=True)
    backend: str
    offering_id: str
    offering_family: str
    market: str
    amount_micro: int = Field(sa_column=Column(BigInteger, nullable=False))
    list_price_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    hs23_hours: float = 0.0  # delivered: busy time × the unit's HS23 (0 on idle and egress rows)
    hs23_hours_held: float = 0.0  # held: billable time × the unit's HS23, busy or not
    egress_gb: float = 0.0


class SpotPriceRow(SQLModel, table=True):
    """A provider's spot price from one moment on, in one zone (EC2 spot price history)."""

    __tablename__ = "spot_prices"
    __table_args__ = (
        UniqueConstraint("backend", "zone", "instance_type", "at", name="uq_spot_price_point"),
        Index("ix_spot_prices_lookup", "backend", "instance_type", "zone", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    backend: str
    zone: str
    instance_type: str
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    price_micro_per_hour: int = Field(sa_column=Column(BigInteger, nullable=False))


class InvoiceLineRow(SQLModel, table=True):
    """One line of a provider's invoice (AWS CUR, GCP billing export), kept to reconcile the ledger."""

    __tablename__ = "invoice_lines"
    __table_args__ = (
        UniqueConstraint("line_key", name="uq_invoice_line_key"),
        Index("ix_invoice_usage_start", "usage_start"),
    )

    id: int | None = Field(default=None, primary_key=True)
    line_key: str  # stable id from the export (CUR identity, or a digest of the GCP row)
    source: str  # aws-cur | gcp-billing
    file: str
    line: int
    usage_start: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    usage_end: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    service: str
    usage_type: str
    line_type: str
    category: str  # compute | egress | storage | ip | nat | support | credit | tax | other
    amount_micro: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = "USD"
    provider_resource: str | None = Field(default=None, index=True)
    tags: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    usage_amount: float | None = None
    account: str | None = None


class PublishedSummaryRow(SQLModel, table=True):
    """What was last published to APEL for a month, so publishing twice sends the same totals."""

    __tablename__ = "published_summaries"
    __table_args__ = (UniqueConstraint("month", "kind", name="uq_published_month_kind"),)

    id: int | None = Field(default=None, primary_key=True)
    month: str  # YYYY-MM
    kind: str  # summary | normalised | sync | cloud_summary ...
    sha256: str
    records: int
    messages: int
    published_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


def row_time(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: treat them as the UTC they were stored as."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value

"""Prometheus metrics for the broker, fed by the event bus and by reading the database — never called by the core.

A TARDIS-style monitoring plugin: `BrokerMetrics.attach(bus)` subscribes to `events/#` and turns each
stored event into counter/histogram updates; `FleetCollector` reads the resources and requests tables
at scrape time for the gauges (units by backend and state, spend rate). Each instance has its own
`CollectorRegistry`, so two brokers (or two tests) in one process never share numbers.

Event kinds understood (payload fields as `provisioner.store` writes them):
`resource.state` (from, to, backend), `resource.adopted`, `resource.orphan_released`,
`plan.created` (solver, total_cost), `backend.disabled`, `circuit.opened`,
`backend.error` (error_type) and `cycle.finished` (seconds, dry_run) when the engine publishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from accounting.billing import price_in_force
from accounting.spot_prices import StoredSpotPrices
from provisioner.bus import EVENTS_PREFIX, Bus, BusMessage, Subscription
from provisioner.domain import LIVE_STATES
from provisioner.model import BurstRequestRow, ResourceRow, from_micro

log = structlog.get_logger(__name__)

EVENTS_FILTER = f"{EVENTS_PREFIX}#"
CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNKNOWN = "unknown"


def _label(value: object, missing: str = UNKNOWN) -> str:
    return str(value) if value not in (None, "") else missing


def _usd(value: object) -> Decimal | None:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return amount if amount.is_finite() else None


class FleetCollector(Collector):
    """Gauges read from the database when Prometheus scrapes: what exists now, not what happened."""

    def __init__(self, db: Engine, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now  # the broker's clock: the price in force is the price at this time

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "provisioner_resources",
                "Resources by backend and lifecycle state",
                labels=["backend", "state"],
            ),
            GaugeMetricFamily(
                "provisioner_spend_rate_usd_per_hour",
                "Price per hour in force (the billing model's: spot price history in the zone used) of the live "
                "(requested, provisioning, running, draining) resources",
                labels=["backend"],
            ),
            GaugeMetricFamily("provisioner_burst_requests", "Burst requests by status", labels=["status"]),
            GaugeMetricFamily("provisioner_database_up", "1 if the last scrape could read the database"),
        )

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() (a DB query) at registration.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        resources, spend, requests, up = self._families()
        live = [str(s) for s in LIVE_STATES]
        try:
            with Session(self.db) as session:
                by_state = session.exec(
                    select(ResourceRow.backend, ResourceRow.state, func.count()).group_by(
                        col(ResourceRow.backend), col(ResourceRow.state)
                    )
                ).all()
                now = self.now()
                history = StoredSpotPrices(session)
                by_backend: dict[str, int] = {}
                for row in session.exec(select(ResourceRow).where(col(ResourceRow.state).in_(live))):
                    by_backend[row.backend] = by_backend.get(row.backend, 0) + price_in_force(row, now, history)
                by_status = session.exec(
                    select(BurstRequestRow.status, func.count()).group_by(col(BurstRequestRow.status))
                ).all()
        except SQLAlchemyError as exc:
            log.warning("metrics.database_unreadable", error=type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        for backend, state, count in by_state:
            resources.add_metric([backend, state], count)
        for backend, micro in sorted(by_backend.items()):
            spend.add_metric([backend], float(from_micro(micro)))
        for status, count in by_status:
            requests.add_metric([status], count)
        up.add_metric([], 1)
        return [resources, spend, requests, up]


class BrokerMetrics:
    """The broker's metrics in their own registry; `observe` is pure bookkeeping, `attach` feeds it from a bus."""

    def __init__(
        self,
        db: Engine | None = None,
        registry: CollectorRegistry | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transitions = Counter(
            "provisioner_resource_transitions",
            "Resource lifecycle transitions",
            ["backend", "from_state", "to_state"],
            registry=r,
        )
        self.adopted = Counter(
            "provisioner_resources_adopted",
            "Untracked resources carrying our tag, adopted",
            ["backend"],
            registry=r,
        )
        self.orphans_released = Counter(
            "provisioner_orphans_released",
            "Untracked resources released by the reconciler",
            ["backend"],
            registry=r,
        )
        self.plans = Counter("provisioner_plans", "Plans stored by the engine", ["solver"], registry=r)
        self.plan_cost = Counter(
            "provisioner_plan_cost_usd",
            "Sum of the expected cost of stored plans (monitoring only)",
            registry=r,
        )
        self.last_plan_cost = Gauge(
            "provisioner_last_plan_cost_usd", "Expected cost of the most recent stored plan", registry=r
        )
        self.backend_errors = Counter(
            "provisioner_backend_errors", "Backend call failures by type", ["backend", "type"], registry=r
        )
        self.backends_disabled = Counter(
            "provisioner_backends_disabled",
            "Backends disabled after authentication failures",
            ["backend"],
            registry=r,
        )
        self.circuits_opened = Counter(
            "provisioner_circuits_opened", "Circuit breakers tripped", ["scope"], registry=r
        )
        self.cycle_seconds = Histogram(
            "provisioner_cycle_duration_seconds",
            "Duration of engine cycles (observe, plan, act, reconcile)",
            ["dry_run"],
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        # Observed by the API itself (its own request latency), not by the core.
        self.api_dry_run_seconds = Histogram(
            "provisioner_api_dry_run_plan_seconds",
            "Duration of the dry-run cycles GET /v1/plan runs",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.events = Counter("provisioner_events", "Events seen on the bus by kind", ["kind"], registry=r)
        self.bad_events = Counter(
            "provisioner_metrics_unreadable_events", "Bus messages the metrics could not read", registry=r
        )
        if db is not None:
            if now is None:
                raise ValueError("BrokerMetrics with a database needs the broker's clock (now=clock.now)")
            r.register(FleetCollector(db, now))
        self._subscription: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None

    # --- bookkeeping -------------------------------------------------------------------------------

    def observe(self, message: BusMessage) -> None:
        """Update the metrics from one bus message (a stored event as `StoredEvent.message()` shapes it)."""
        body: Mapping[str, Any] = message.payload
        kind = body.get("kind") or message.topic.removeprefix(EVENTS_PREFIX)
        payload = body.get("payload")
        if not isinstance(kind, str) or not isinstance(payload, Mapping):
            self.bad_events.inc()
            return
        self.events.labels(kind).inc()
        subject = _label(body.get("subject"))
        if kind == "resource.state":
            self.transitions.labels(
                _label(payload.get("backend")),
                _label(payload.get("from"), missing="none"),  # a new intent comes from nothing
                _label(payload.get("to")),
            ).inc()
        elif kind == "resource.adopted":
            self.adopted.labels(_label(payload.get("backend"))).inc()
        elif kind == "resource.orphan_released":
            self.orphans_released.labels(_label(payload.get("backend"))).inc()
        elif kind == "plan.created":
            self.plans.labels(_label(payload.get("solver"))).inc()
            cost = _usd(payload.get("total_cost"))
            if cost is not None and cost >= 0:
                # Prometheus stores floats; these are for watching, the ledger keeps the exact money.
                self.plan_cost.inc(float(cost))
                self.last_plan_cost.set(float(cost))
        elif kind == "backend.error":
            self.backend_errors.labels(
                _label(payload.get("backend") or subject), _label(payload.get("error_type"))
            ).inc()
        elif kind == "backend.disabled":
            self.backends_disabled.labels(subject).inc()
        elif kind == "circuit.opened":
            scope = subject.split(":", 1)[0] if ":" in subject else UNKNOWN
            self.circuits_opened.labels(scope).inc()
        elif kind == "cycle.finished":
            seconds = payload.get("seconds")
            if isinstance(seconds, int | float) and seconds >= 0:
                self.cycle_seconds.labels(str(bool(payload.get("dry_run"))).lower()).observe(seconds)
            else:
                self.bad_events.inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    # --- feeding from the bus ----------------------------------------------------------------------

    async def attach(self, bus: Bus) -> None:
        """Subscribe to every event and update the metrics as they arrive, until `detach`."""
        if self._reader is not None:
            raise RuntimeError("metrics are already attached to a bus")
        self._subscription = await bus.subscribe(EVENTS_FILTER)
        self._reader = asyncio.create_task(self._read(self._subscription), name="metrics-reader")

    async def _read(self, subscription: Subscription) -> None:
        async for message in subscription:
            try:
                self.observe(message)
            except Exception:  # one odd message must not stop monitoring
                self.bad_events.inc()
                log.warning("metrics.observe_failed", topic=message.topic, exc_info=True)

    async def detach(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

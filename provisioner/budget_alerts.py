"""Budget alerts: each experiment's month-end spend forecast against its monthly budget, as an event and a metric.

The month-to-date ledger is refreshed from the billing model, the linear forecast of `accounting.reports`
is read per experiment, and when a forecast passes `threshold` × budget an event `budget.forecast_exceeded`
is stored and published on the bus (once per crossing; `budget.forecast_ok` when it falls back under).
Prometheus gauges carry the figures so an alert rule (docs/alerts/budget.rules.yml) can page someone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import structlog
from prometheus_client import CollectorRegistry, Gauge
from sqlmodel import Session

from accounting.ledger import build_ledger
from accounting.period import Month
from accounting.pipeline import monthly_budgets
from accounting.reports import CostReport, cost_report, usd
from policies import Policy, site_offerings
from provisioner.broker import Broker
from provisioner.domain import Offering
from provisioner.store import Store

log = structlog.get_logger(__name__)

DEFAULT_THRESHOLD = Decimal("1.0")
EXCEEDED = "budget.forecast_exceeded"
BACK_UNDER = "budget.forecast_ok"


@dataclass(frozen=True)
class BudgetStatus:
    experiment: str
    budget: Decimal | None
    spend: Decimal
    forecast: Decimal
    hs23_hours: float
    threshold: Decimal

    @property
    def ratio(self) -> float | None:
        """Forecast over budget (1.0: the forecast lands exactly on the budget)."""
        if self.budget is None or self.budget == 0:
            return None
        return float(self.forecast / self.budget)

    @property
    def alert(self) -> bool:
        return self.budget is not None and self.forecast > self.budget * self.threshold

    @property
    def cost_per_hs23_hour(self) -> Decimal | None:
        return None if self.hs23_hours <= 0 else self.spend / Decimal(repr(self.hs23_hours))

    def message(self) -> str:
        budget = f"${usd(self.budget):,}" if self.budget is not None else "no budget"
        return (
            f"{self.experiment}: month-end forecast ${usd(self.forecast):,} against a budget of {budget}"
            f" (spent ${usd(self.spend):,} so far)"
        )


def month_report(
    store: Store, policy: Policy, offerings: Mapping[str, Offering], now: datetime, *, refresh: bool = True
) -> CostReport:
    """This month's cost report as of `now`; `refresh`: rebuild the month-to-date ledger first."""
    month = Month.of(now)
    every = {o.id: o for o in site_offerings(policy)} | dict(offerings)
    with Session(store.db, expire_on_commit=False) as session:
        if refresh:
            build_ledger(session, month.start, min(now, month.end), offerings=every, now=now)
            session.commit()
        return cost_report(session, month, budgets=monthly_budgets(policy), offerings=every, now=now)


def statuses(report: CostReport, policy: Policy, threshold: Decimal = DEFAULT_THRESHOLD) -> list[BudgetStatus]:
    """One status per experiment of the policy (spend 0 when it spent nothing yet)."""
    budgets = monthly_budgets(policy)
    lines = {line.name: line for line in report.by_experiment}
    out = []
    for name in sorted(set(policy.experiments) | set(lines)):
        line = lines.get(name)
        out.append(
            BudgetStatus(
                experiment=name,
                budget=budgets.get(name),
                spend=line.spend if line else Decimal(0),
                forecast=(line.forecast if line and line.forecast is not None else Decimal(0)),
                hs23_hours=line.hs23_hours if line else 0.0,
                threshold=threshold,
            )
        )
    return out


class BudgetAlerter:
    """Remembers which experiments are in alert, publishes crossings, and keeps the gauges current."""

    def __init__(self, store: Store, registry: CollectorRegistry, threshold: Decimal = DEFAULT_THRESHOLD) -> None:
        self.store = store
        self.threshold = threshold
        self.alerting: set[str] = set()
        self.last: list[BudgetStatus] = []
        self.forecast_usd = Gauge(
            "provisioner_budget_forecast_usd",
            "Month-end spend forecast per experiment (linear, from the recent burn rate)",
            ["experiment"],
            registry=registry,
        )
        self.budget_usd = Gauge(
            "provisioner_budget_usd", "Monthly budget per experiment (from the policy)", ["experiment"],
            registry=registry,
        )
        self.spend_usd = Gauge(
            "provisioner_budget_spend_usd", "Spend so far this month per experiment", ["experiment"],
            registry=registry,
        )
        self.ratio = Gauge(
            "provisioner_budget_forecast_ratio",
            "Month-end forecast over monthly budget per experiment (> 1: the forecast passes the budget)",
            ["experiment"],
            registry=registry,
        )
        self._restore()
        self.alert = Gauge(
            "provisioner_budget_forecast_alert",
            "1 while the experiment's month-end forecast passes the alert threshold of its budget",
            ["experiment"],
            registry=registry,
        )

    def _restore(self) -> None:
        """After a restart: the experiments whose last budget event says they are in alert."""
        latest: dict[str, tuple[int, str]] = {}
        for kind in (EXCEEDED, BACK_UNDER):
            for event in self.store.events(kind=kind):
                if event.id is not None and event.id > latest.get(event.subject, (-1, ""))[0]:
                    latest[event.subject] = (event.id, kind)
        self.alerting = {name for name, (_, kind) in latest.items() if kind == EXCEEDED}

    async def check(self, policy: Policy, offerings: Mapping[str, Offering], now: datetime) -> list[BudgetStatus]:
        """Refresh the month's ledger, forecast, and publish crossings (the slow part runs in a thread)."""
        report = await asyncio.to_thread(month_report, self.store, policy, offerings, now)
        current = statuses(report, policy, self.threshold)
        await self.update(current)
        return current

    async def update(self, current: list[BudgetStatus]) -> list[BudgetStatus]:
        """Publish what crossed since the last update; returns the statuses newly in alert."""
        crossed = []
        for status in current:
            name = status.experiment
            self.forecast_usd.labels(name).set(float(status.forecast))
            self.spend_usd.labels(name).set(float(status.spend))
            if status.budget is not None:
                self.budget_usd.labels(name).set(float(status.budget))
            if status.ratio is not None:
                self.ratio.labels(name).set(status.ratio)
            self.alert.labels(name).set(1 if status.alert else 0)
            payload = {
                "experiment": name,
                "forecast_usd": str(usd(status.forecast)),
                "budget_usd": str(usd(status.budget)) if status.budget is not None else None,
                "spend_usd": str(usd(status.spend)),
                "threshold": str(self.threshold),
                "message": status.message(),
            }
            if status.alert and name not in self.alerting:
                self.alerting.add(name)
                crossed.append(status)
                log.warning("budget.forecast_exceeded", experiment=name, message=status.message())
                await self.store.event(EXCEEDED, name, payload)
            elif not status.alert and name in self.alerting:
                self.alerting.discard(name)
                await self.store.event(BACK_UNDER, name, payload)
        self.last = current
        return crossed


async def watch_budgets(alerter: BudgetAlerter, broker: Broker, stop: asyncio.Event, every_seconds: float) -> None:
    """Check the month-end forecasts against the budgets now and every `every_seconds` until `stop`."""
    while not stop.is_set():
        try:
            await alerter.check(broker.policy, broker.offerings, broker.clock.now())
        except Exception as exc:  # a failed check must not stop the broker; the next one tries again
            log.warning("budgets.check_failed", error=type(exc).__name__, detail=str(exc)[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_seconds)

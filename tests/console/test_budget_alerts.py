"""Budget alerts: a forecast passing its budget is one event on the bus (per crossing), a gauge, and a rule."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from provisioner.budget_alerts import BACK_UNDER, EXCEEDED, BudgetAlerter, BudgetStatus
from provisioner.bus import InProcessBus, event_topic
from provisioner.clock import SimulatedClock
from provisioner.db import open_database
from provisioner.store import Store
from tests.api.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def status(forecast: str, budget: str = "1000", threshold: str = "0.9") -> BudgetStatus:
    return BudgetStatus("atlas", Decimal(budget), Decimal("100"), Decimal(forecast), 10.0, Decimal(threshold))


async def test_a_forecast_crossing_the_threshold_publishes_once_and_once_more_when_back_under(tmp_path: Path) -> None:
    bus = InProcessBus()
    store = Store(open_database(f"sqlite:///{tmp_path / 'a.db'}"), SimulatedClock(datetime(2026, 3, 1, tzinfo=UTC)), "b", bus)
    seen = await bus.subscribe("events/#")
    registry = CollectorRegistry()
    alerter = BudgetAlerter(store, registry, Decimal("0.9"))

    assert await alerter.update([status("850")]) == []  # 85 % of the budget: under the 90 % threshold
    crossed = await alerter.update([status("950")])
    assert [s.experiment for s in crossed] == ["atlas"]
    message = await seen.get(timeout=5)
    assert message.topic == event_topic(EXCEEDED)
    assert message.payload["payload"]["forecast_usd"] == "950.00"
    assert "month-end forecast $950.00 against a budget of $1,000.00" in message.payload["payload"]["message"]
    assert await alerter.update([status("990")]) == []  # still over: no second event
    assert 'provisioner_budget_forecast_alert{experiment="atlas"} 1.0' in generate_latest(registry).decode()

    # a restart remembers the alert is already raised
    again = BudgetAlerter(store, CollectorRegistry(), Decimal("0.9"))
    assert again.alerting == {"atlas"}

    await alerter.update([status("500")])
    assert (await seen.get(timeout=5)).topic == event_topic(BACK_UNDER)
    assert 'provisioner_budget_forecast_alert{experiment="atlas"} 0.0' in generate_latest(registry).decode()
    await bus.close()


def test_the_seeded_broker_raised_the_alert_as_an_event_and_a_metric(console: LiveServer) -> None:
    with console.client("op-token") as op:
        events = op.get("/v1/events", params={"kind": EXCEEDED}).json()
        assert [e["subject"] for e in events] == ["atlas"]
        metrics = op.get("/metrics").text
        assert 'provisioner_budget_forecast_alert{experiment="atlas"} 1.0' in metrics
        assert 'provisioner_budget_forecast_alert{experiment="lsst"} 0.0' in metrics


def test_the_shipped_alert_rule_reads_the_gauge_the_broker_exports() -> None:
    rules = yaml.safe_load((ROOT / "docs" / "alerts" / "budget.rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert any("provisioner_budget_forecast_ratio" in e for e in exprs)
    assert any("provisioner_budget_forecast_alert" in e for e in exprs)

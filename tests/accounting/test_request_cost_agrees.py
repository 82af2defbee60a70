"""A request's cost is the billing model's money: `request show`, the API, the console, burst
progress (max_cost) and the ledger agree to the cent when the spot price changes mid-run."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlmodel import Session

from accounting.ledger import build_ledger, ledger_totals
from accounting.spot_prices import StoredSpotPrices
from provisioner.api.routes.requests import _out
from provisioner.bursts.progress import load_progress
from provisioner.bursts.repository import settle_requests
from provisioner.console.views import fleet as console_fleet
from provisioner.console.views import requests as console_requests
from provisioner.model import BurstRequestRow
from provisioner.requests import view
from tests.accounting.test_billing import T0, row
from tests.accounting.test_spot_prices import prices

NOW = T0 + timedelta(hours=2)


def test_request_cost_api_progress_and_ledger_agree_at_the_spot_price_in_force(session: Session) -> None:
    prices(session)  # $0.10 until T0+1h, then $0.30, in us-east-1a; created at the dearest zone's $0.90
    spec = {"experiment": "atlas", "cores": 16, "duration_hours": 24, "max_cost_usd": "1.00"}
    session.add(BurstRequestRow(id="rq1", experiment="atlas", status="running", spec=spec,
                                max_cost_micro=1_000_000, created_at=T0, updated_at=T0))  # fmt: skip
    live: dict[str, Any] = {"state": "running", "released_at": None}
    session.add(row("a", zone="us-east-1a", price_micro_per_hour=900_000, request_id="rq1", **live))
    session.add(row("b", zone="us-east-1a", price_micro_per_hour=900_000, group_id="request:rq1", **live))
    session.add(row("other", zone="us-east-1a", price_micro_per_hour=900_000, request_id=None))
    session.commit()
    engine = session.get_bind()

    build_ledger(session, T0, NOW, now=NOW, prices=StoredSpotPrices(session))
    ledger = sum(t.amount_micro for t in ledger_totals(session, T0, NOW, []))
    assert ledger == 3 * 400_000  # 1 h at $0.10 + 1 h at $0.30 each, not 2 h at $0.90

    expected = Decimal("0.80")  # the request's two units
    assert view(engine, "rq1", now=NOW).cost_so_far == expected  # type: ignore[arg-type]
    broker = SimpleNamespace(db=engine, clock=SimpleNamespace(now=lambda: NOW))
    assert _out(SimpleNamespace(broker=broker), session.get(BurstRequestRow, "rq1")).cost_so_far_usd == expected  # type: ignore[arg-type]
    [shown] = console_requests(engine, None, NOW)  # type: ignore[arg-type]
    assert shown.cost_usd == expected
    assert load_progress(session, "rq1", since=T0, now=NOW).cost_so_far == expected
    # max_cost $1.00: spent $0.80 plus 15 min of both units at $0.30 is $0.95, under it. At the
    # creation price ($3.60 spent) the request would have ended by max_cost.
    assert [f.request_id for f in settle_requests(engine, NOW).finished] == []  # type: ignore[arg-type]


def test_planner_fleet_and_spend_rate_gauge_use_the_spot_price_in_force(session: Session) -> None:
    from provisioner.clock import SimulatedClock
    from provisioner.fleet import Fleet
    from provisioner.metrics import FleetCollector
    from provisioner.store import Store

    prices(session)  # in us-east-1a: $0.10, then $0.30 from T0+1h; the unit was created at $0.90
    session.add(row("a", zone="us-east-1a", price_micro_per_hour=900_000, state="running", released_at=None))
    session.add(row("od", zone=None, market="on_demand", price_micro_per_hour=500_000, state="running",
                    offering_id="aws:us-east-1:m7i.2xlarge:on_demand", released_at=None))  # fmt: skip
    session.commit()
    engine = session.get_bind()
    store = Store(engine, SimulatedClock(NOW), "b1")  # type: ignore[arg-type]
    fleet = Fleet()
    fleet.refresh(store.resources())
    units = {u.resource_id: u.price_per_hour for u in fleet.units(NOW, store.prices_in_force(fleet.rows, NOW))}
    assert units == {"a": Decimal("0.3"), "od": Decimal("0.5")}
    [_, gauge, *_] = FleetCollector(engine, lambda: NOW).collect()  # type: ignore[arg-type]
    assert [s.value for s in gauge.samples] == [0.8]  # not 0.9 + 0.5
    assert [line.usd_per_hour for line in console_fleet(engine, None, NOW)] == [Decimal("0.5"), Decimal("0.3")]  # type: ignore[arg-type]

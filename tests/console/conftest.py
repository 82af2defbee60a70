"""A console over a seeded broker: simulated clock and backends, requests run for days, a tripped breaker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provisioner.api import create_app
from provisioner.api.auth_config import AuthConfig, GroupGrant, StaticToken
from provisioner.api.context import ApiSettings
from provisioner.broker import EXAMPLE_POLICY, Broker, build_broker
from provisioner.bus import InProcessBus
from provisioner.circuit import backend_key
from provisioner.clock import SimulatedClock
from provisioner.settings import Settings
from tests.api.conftest import LiveServer, serve

START = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
OPERATOR = "burst:request burst:read burst:cancel policy:read policy:write resource:read resource:drain report:read"
TOKENS = {
    "operator": ("op-token", OPERATOR, "/facility/operators"),
    "atlas": ("atlas-token", "burst:request burst:read burst:cancel resource:read", "/atlas"),
    "finance": ("finance-token", "report:read", "/facility/finance"),
    # two tenants reading everything an experiment may read (tests/console/test_tenants.py)
    "atlas-reader": ("atlas-reader-token", "burst:read resource:read report:read", "/atlas"),
    "lsst-reader": ("lsst-reader-token", "burst:read resource:read report:read", "/lsst"),
}


def auth() -> AuthConfig:
    return AuthConfig(
        groups={
            "/atlas": GroupGrant(experiment="atlas"),
            "/lsst": GroupGrant(experiment="lsst"),
            "/facility/operators": GroupGrant(all_experiments=True),
            "/facility/finance": GroupGrant(all_experiments=True),
        },
        static_tokens=[
            StaticToken(token=t, subject=name, scopes=s.split(), groups=[g])  # type: ignore[arg-type]
            for name, (t, s, g) in TOKENS.items()
        ],
    )


def seeded_app(root: Path) -> object:
    def build() -> Broker:
        settings = Settings(state_dir=root, database_url=f"sqlite:///{root / 'broker.db'}", broker_id="console-test")
        return build_broker(settings, clock=SimulatedClock(START), bus=InProcessBus())

    return create_app(build, settings=ApiSettings(auth=auth(), budget_check_seconds=0))


def seed(server: LiveServer) -> None:
    """Two experiments' requests running for four days, a lowered ATLAS budget, a tripped GCE breaker."""
    broker = server.context.broker
    clock = broker.clock
    assert isinstance(clock, SimulatedClock)
    from provisioner.admission import admit_spec
    from provisioner.requests import BurstRequestSpec

    assert broker.policy_keeper is not None
    lowered = EXAMPLE_POLICY.read_text().replace(
        '[experiments.atlas.budgets]\nmonthly = "50000"', '[experiments.atlas.budgets]\nmonthly = "400"'
    )
    broker.policy_keeper.apply(lowered, author="operator", comment="ATLAS budget cut for March")
    for body in (
        {"experiment": "atlas", "cores": 512, "duration_hours": 240},
        {"experiment": "lsst", "cores": 256, "duration_hours": 240},
        {"experiment": "lsst", "gpus": 8, "duration_hours": 200},
    ):
        admit_spec(broker, BurstRequestSpec.model_validate(body))
    for _ in range(3):
        server.call(broker.engine.run_cycle())
        clock.advance(600)
    for _ in range(4):  # four days of running units
        clock.advance(timedelta(days=1).total_seconds())
        server.call(broker.engine.run_cycle())
    broker.engine.circuit.record_failure(
        backend_key("gce"), "gce: ZONE_RESOURCE_POOL_EXHAUSTED in us-central1-a", cooloff=timedelta(hours=2)
    )
    assert server.context.budgets is not None
    server.call(server.context.budgets.check(broker.policy, broker.offerings, clock.now()))


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    app = seeded_app(tmp_path_factory.mktemp("console"))
    for server in serve(app):  # type: ignore[arg-type]
        seed(server)
        yield server


def import_invoices(server: LiveServer) -> None:
    """Close the month on the ledger, then import what the simulated clouds invoice for it (as an operator
    would with `accounting invoice import`), so the finance page has a reconciliation to show."""
    from sqlmodel import Session

    from accounting.invoice import InvoiceFileError, parse_invoice
    from accounting.period import Month
    from accounting.pipeline import close_broker_month
    from accounting.reconcile import store_lines
    from provisioner.demo_invoice import invoices

    broker = server.context.broker
    month = Month.of(broker.clock.now())
    out = broker.settings.state_dir / "accounting"
    close_broker_month(broker, month, queue_path=out / "apel-outgoing", out_dir=out, html=False)
    with Session(broker.db, expire_on_commit=False) as session:
        for path in invoices(broker.backends, month, out / "invoices", now=broker.clock.now()):  # type: ignore[arg-type]
            try:
                parsed = parse_invoice(path)
            except InvoiceFileError:  # a cloud that ran nothing this month sends no lines
                continue
            store_lines(session, parsed.lines, path.name)


@pytest.fixture(scope="module")
def reconciled(console: LiveServer) -> LiveServer:
    import_invoices(console)
    return console

"""Closing a month end to end on a database filled by a real engine run on simulated backends."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from accounting.dirq_queue import OutgoingQueue
from accounting.period import Month
from accounting.pipeline import PipelineReport, demo_accounting
from accounting.publish import FutureMonth
from provisioner.admission import admit_spec
from provisioner.broker import Broker, build_broker
from provisioner.bus import InProcessBus
from provisioner.cli import app
from provisioner.clock import SimulatedClock
from provisioner.model import ResourceRow, UsageRecordRow
from provisioner.requests import BurstRequestSpec, cost_of_resources
from provisioner.settings import Settings

START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
NOVEMBER = Month(2026, 11)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Broker:
    """Three requests (CPU burst, GPU training, preemptible work) run for three simulated hours."""
    root = tmp_path_factory.mktemp("fleet")
    clock = SimulatedClock(START)
    settings = Settings(state_dir=root, database_url=f"sqlite:///{root / 'broker.db'}", broker_id="acct-test")
    broker = build_broker(settings, clock=clock, bus=InProcessBus())
    for spec in (
        BurstRequestSpec(experiment="atlas", cores=64, duration_hours=2, max_cost_usd=Decimal(100)),
        BurstRequestSpec(
            experiment="lsst", gpus=8, gpu_model="A100", duration_hours=2, max_cost_usd=Decimal(500)
        ),
        BurstRequestSpec(experiment="atlas", cores=256, duration_hours=2, preemptible=True),
    ):
        assert admit_spec(broker, spec).admission.accepted

    async def run() -> None:
        for cycle in range(6):
            await broker.engine.run_cycle()
            if cycle == 2:  # work lands on everything running: busy spells for the CPU estimate
                for backend in broker.backends.values():
                    for unit in backend.live_units():  # type: ignore[attr-defined]
                        backend.set_busy(unit.provider_id, True)  # type: ignore[attr-defined]
            clock.advance(1800)

    asyncio.run(run())
    return broker


def _queued(path: Path) -> list[str]:
    return [text for _, text in OutgoingQueue(path).messages()] if path.exists() else []


def test_close_month_accounts_the_fleet_and_a_second_run_publishes_identical_content(
    fleet: Broker, tmp_path: Path
) -> None:
    now = fleet.clock.now()
    with Session(fleet.db) as session:
        resources = list(session.exec(select(ResourceRow)))
    launched = [r for r in resources if r.launched_at is not None]
    assert {r.market for r in launched} >= {"spot", "allocation", "backfill"}

    first = demo_accounting(fleet, "2026-11", tmp_path)
    assert first.problems == [] and first.left_out == []
    assert first.collected == first.imported == len(launched)
    with Session(fleet.db) as session:
        usage = list(session.exec(select(UsageRecordRow)))
    kinds = Counter(u.kind for u in usage)
    assert set(kinds) == {"vm", "pilot", "backfill"}
    assert {u.resource_id for u in usage} == {r.id for r in launched}
    assert all(u.cpu_seconds is None for u in usage)  # the fleet's CPU time is unknown, not estimated
    live_vms = [u for u in usage if u.kind == "vm" and u.end_time is None]
    assert all(u.status == "started" for u in live_vms)

    # The ledger agrees with an independent sum of price × running time, to the cent (the events say
    # when the provider stopped a unit it took back).
    ledger_total = sum((t.amount for t in first.by_experiment), Decimal(0))
    with Session(fleet.db) as session:
        assert abs(ledger_total - cost_of_resources(session, resources, now)) <= Decimal("0.01")
    assert {t.key[0] for t in first.by_experiment} == {"atlas", "lsst"}
    assert first.ledger.resources == len(launched)

    queue = tmp_path / "apel-outgoing"
    messages = _queued(queue)
    assert len(messages) == first.messages > 0
    text = "\n".join(messages)
    assert "APEL-summary-job-message: v0.2" in text and "APEL-cloud-message: v0.4" in text
    sync = "\n".join(m for m in messages if m.startswith("APEL-sync-message"))
    synced = sum(int(n) for n in re.findall(r"^NumberOfJobs: (\d+)$", sync, flags=re.M))
    assert synced == kinds["pilot"] + kinds["backfill"]
    assert text.count("Status: started") == len(live_vms)
    names = {p.name for p in first.files}
    assert {"cost_2026-11_summary.csv", "cost_2026-11_by_experiment.csv"} <= names
    assert any(p.suffix == ".html" and p.stat().st_size > 0 for p in first.files)

    second = demo_accounting(fleet, NOVEMBER, tmp_path)
    _same_outcome(first, second)
    again = _queued(queue)
    assert len(again) == 2 * len(messages)
    assert sorted(again) == sorted(messages * 2)  # the second batch is byte-identical to the first


def _same_outcome(first: PipelineReport, second: PipelineReport) -> None:
    assert [(t.key, t.amount_micro, t.hs23_hours) for t in second.by_experiment] == [
        (t.key, t.amount_micro, t.hs23_hours) for t in first.by_experiment
    ]
    assert [(r.kind, r.sha256, r.records) for r in second.publish.results] == [
        (r.kind, r.sha256, r.records) for r in first.publish.results
    ]
    assert not any(r.changed for r in second.publish.results)
    assert (second.collected, second.imported, second.ledger.rows) == (
        first.collected,
        first.imported,
        first.ledger.rows,
    )


def test_a_month_that_has_not_begun_is_refused(fleet: Broker, tmp_path: Path) -> None:
    with pytest.raises(FutureMonth):
        demo_accounting(fleet, "2027-01", tmp_path)
    assert not (tmp_path / "apel-outgoing").exists() and not list(tmp_path.glob("*.csv"))


def test_collect_command_closes_the_month_from_settings(
    fleet: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = fleet.db.url.database
    assert source is not None
    db = tmp_path / "copy.db"
    with sqlite3.connect(source) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # the live database may hold recent writes in its WAL, which a file copy misses
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("PROVISIONER_BROKER_ID", "acct-cli")
    queue, out = tmp_path / "queue", tmp_path / "reports"
    args = ["accounting", "collect", "--month", "2026-11", "--site", "UKI-CLI", "--queue", str(queue)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-html"])
    assert result.exit_code == 0, result.output
    assert "site UKI-CLI" in result.output and "Ledger 2026-11 by experiment" in result.output
    assert "atlas" in result.output and "lsst" in result.output
    assert _queued(queue) and (out / "cost_2026-11_summary.csv").exists()
    assert "SiteName: UKI-CLI" in "\n".join(_queued(queue))
    bad = CliRunner().invoke(app, ["accounting", "collect", "--month", "2026-13"])
    assert bad.exit_code != 0 and "YYYY-MM" in bad.output

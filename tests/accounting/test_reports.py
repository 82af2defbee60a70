"""Finance report numbers on a small hand-computed month, and the CSV / HTML / CLI outputs."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from accounting.ledger import EgressUsage, build_ledger
from accounting.period import Month
from accounting.report_html import write_html
from accounting.reports import cost_report, linear_forecast, report_title, write_csv
from provisioner.domain import EgressTier
from tests.accounting.test_ledger import resource

OCT = Month(2026, 10)
D = datetime(2026, 10, 1, tzinfo=UTC)
NOW = D + timedelta(days=14)  # 15 October 00:00 UTC
ALLOC = "slurm:maxwell:cpu-node:allocation"
GCE_TIERS = (EgressTier(1, Decimal(0)), EgressTier(None, Decimal("0.12")))


def scenario(session: Session) -> None:
    """atlas: $240 on-demand + $72 spot (list $240); cms: $96 on GCE (12 h idle) + $12 egress, and
    48 node-hours of an HPC allocation (0 cash)."""
    day = timedelta(days=1)
    session.add(resource("r1", price_micro_per_hour=1_000_000, launched_at=D, released_at=D + 10 * day))
    session.add(
        resource("r2", offering_id="aws:us-east-1:m7i.2xlarge:spot", market="spot", price_micro_per_hour=300_000,
                 launched_at=D + 4 * day, released_at=D + 14 * day)
    )  # fmt: skip
    session.add(
        resource("r3", experiment="cms", backend="gce", offering_id="gce:europe-west4:n2-standard-4:on_demand",
                 price_micro_per_hour=2_000_000, cores=4, hs23_per_core=10.0, launched_at=D + 11 * day,
                 released_at=D + 13 * day, busy=False, idle_since=D + 12 * day + timedelta(hours=12))
    )  # fmt: skip
    session.add(
        resource("r4", experiment="cms", backend="maxwell", offering_id=ALLOC, market="allocation",
                 price_micro_per_hour=0, cores=32, hs23_per_core=10.0, launched_at=D, released_at=D + 2 * day)
    )  # fmt: skip
    session.commit()
    build_ledger(
        session, D, OCT.end, now=NOW,
        list_prices={"aws:us-east-1:m7i.2xlarge:spot": Decimal("1.00")},
        egress=[EgressUsage("r3", D + 11 * day + timedelta(hours=1), 101, "gce:europe-west4")],
        egress_tiers={"gce:europe-west4": GCE_TIERS},
    )  # fmt: skip


def test_report_numbers_on_a_hand_computed_month(any_session: Session) -> None:
    scenario(any_session)
    budgets = {"atlas": Decimal(500), "cms": Decimal(100)}
    report = cost_report(any_session, OCT, budgets=budgets, allocations_granted={ALLOC: 1000.0}, now=NOW)
    assert report.total.spend == Decimal(420)
    assert {line.name: line.spend for line in report.by_experiment} == {"atlas": 312, "cms": 108}
    cms = next(line for line in report.by_experiment if line.name == "cms")
    assert cms.budget == 100 and cms.remaining == -8  # over budget
    assert {line.name: line.spend for line in report.by_backend} == {"aws": 312, "gce": 108, "maxwell": 0}
    assert {line.name: line.spend for line in report.by_market} == {
        "on_demand": 348,
        "spot": 72,
        "allocation": 0,
    }
    assert report.egress_spend == 12 and report.egress_share == pytest.approx(12 / 420)
    assert report.idle_spend == 24
    assert report.spot_paid == 72 and report.spot_list == 240 and report.spot_savings == 168
    # HS23-hours: 240 h × 100 + 240 h × 100 + 36 busy h × 40 + 48 h × 320 = 64,800
    assert report.total.hs23_hours == pytest.approx(64_800)
    assert report.total.cost_per_hs23_hour == pytest.approx(Decimal(420) / Decimal(64_800))
    [alloc] = report.allocations
    assert (alloc.node_hours_used, alloc.node_hours_granted) == (48.0, 1000.0)
    # Forecast: the last 7 full days (8–14 Oct) cost 3×24 + 7×7.2 + 96 + 12 = 230.4; 17 days are left.
    f = report.forecast
    assert f is not None and f.window_days == 7
    assert f.spend_to_date == 420
    assert f.daily_rate == Decimal("230.4") / 7
    assert f.month_end == Decimal(420) + Decimal("230.4") / 7 * 17
    assert {d.isoformat(): v for d, v in report.daily}["2026-10-12"] == Decimal(
        "67.2"
    )  # GCE 48 + egress 12 + spot 7.2
    assert [line.name for line in report.by_month] == ["2026-10"]


def test_forecast_of_a_closed_month_is_its_actual_spend() -> None:
    daily = {D.date() + timedelta(days=i): Decimal(10) for i in range(31)}
    f = linear_forecast(daily, OCT, datetime(2026, 11, 20, tzinfo=UTC))
    assert f.month_end == f.spend_to_date == 310


def test_csv_and_html_with_charts_are_written(session: Session, tmp_path: Path) -> None:
    scenario(session)
    report = cost_report(session, OCT, budgets={"atlas": Decimal(500), "cms": Decimal(100)}, now=NOW)
    files = write_csv(report, tmp_path)
    names = {p.name for p in files}
    assert "cost_2026-10_by_experiment.csv" in names and "cost_2026-10_daily.csv" in names
    with (tmp_path / "cost_2026-10_by_experiment.csv").open() as handle:
        rows = {r["experiment"]: r for r in csv.DictReader(handle)}
    assert rows["atlas"]["spend_usd"] == "312.00" and rows["cms"]["remaining_usd"] == "-8.00"
    page = write_html(report, tmp_path)
    html = page.read_text()
    for png in (
        "cost_2026-10_by_experiment.png",
        "cost_2026-10_daily_burn.png",
        "cost_2026-10_by_backend_market.png",
    ):
        assert f"src='{png}'" in html
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "$312.00" in html and "Spot savings" in html


def test_cli_imports_publishes_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.cli import app

    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("PROVISIONER_DATABASE_URL", raising=False)
    usage = tmp_path / "usage.jsonl"
    good = {
        "record_key": "UKI-TEST:job:1", "kind": "job", "experiment": "atlas", "site": "UKI-TEST",
        "submit_host": "ce01", "backend": "aws", "start_time": "2026-10-02T10:00:00Z",
        "end_time": "2026-10-02T12:00:00Z", "wall_seconds": 7200, "cpu_seconds": 50000, "cores": 8,
        "hs23_per_core": 12.5, "resource_id": "r-1",
    }  # fmt: skip
    bad = {**good, "record_key": "UKI-TEST:job:2", "end_time": None, "resource_id": "r-bad"}
    usage.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["accounting", "import", str(usage)])
    assert result.exit_code == 1  # one record refused
    assert "imported 1" in result.output
    queue = tmp_path / "outgoing"
    result = runner.invoke(app, ["accounting", "publish", "--month", "2026-10", "--queue", str(queue)])
    assert result.exit_code == 0, result.output
    assert any(queue.rglob("*"))
    result = runner.invoke(app, ["accounting", "show", "--month", "2026-10"])
    assert "NumberOfJobs: 1" in result.output
    result = runner.invoke(
        app, ["report", "cost", "--month", "2026-10", "--format", "html", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "cost_2026-10.html").exists()
    result = runner.invoke(app, ["report", "cost", "--month", "2026-13"])
    assert result.exit_code != 0


def test_report_as_of_counts_running_units_to_as_of_and_forecasts_their_committed_burn(
    session: Session,
) -> None:
    day = timedelta(days=1)
    live = {"state": "running", "released_at": None}
    session.add(resource("vm", price_micro_per_hour=1_000_000, launched_at=D + 13 * day, **live))
    session.add(
        resource("pilot", backend="maxwell", offering_id=ALLOC, market="allocation", price_micro_per_hour=0,
                 launched_at=D + 13 * day + timedelta(hours=12), walltime_hours=24.0, **live)
    )  # fmt: skip
    session.add(
        resource("queued", backend="maxwell", offering_id=ALLOC, market="allocation", price_micro_per_hour=0,
                 state="provisioning", launched_at=None, released_at=None, walltime_hours=10.0)
    )  # fmt: skip
    session.commit()
    build_ledger(session, D, OCT.end, now=NOW)
    report = cost_report(session, OCT, allocations_granted={ALLOC: 1000.0}, now=NOW)
    assert report.as_of == NOW and "as of 2026-10-15 00:00 UTC" in report_title(report)
    assert report.total.spend == 24
    # the VM keeps burning $24 a day to the month end: 17 days = $408, above the 7-day trend ($58.29)
    assert report.committed == 408
    assert report.forecast is not None and report.forecast.month_end == 24 + 408
    assert report.forecast.method.startswith("committed")
    [alloc] = report.allocations
    assert (alloc.settled, alloc.in_flight, alloc.committed) == (12.0, 12.0, 10.0)
    assert alloc.left == 1000.0 - 34.0
    # a later as-of sees more settled time and less in flight, never the wall clock's
    later = cost_report(session, OCT, allocations_granted={ALLOC: 1000.0}, now=NOW + timedelta(hours=6))
    assert (later.allocations[0].settled, later.allocations[0].in_flight) == (18.0, 6.0)


def test_a_small_budget_fraction_stays_readable() -> None:
    from accounting.reports import _pct

    assert _pct(0.00012, small=True) == "0.012%"
    assert _pct(0.25, small=True) == "25.0%"

"""Finance report numbers on a small hand-computed month, and the CSV / HTML / CLI outputs."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlmodel import Session
from typer.testing import CliRunner

from accounting.ledger import EgressUsage, build_ledger
from accounting.period import Month
from accounting.report_html import write_html
from accounting.reports import (
    ALLOCATION_COLUMNS,
    allocation_row,
    cost_report,
    linear_forecast,
    print_report,
    report_title,
    write_csv,
)
from policies.pacing import pacing_status
from provisioner.domain import AllocationInfo, Arch, EgressTier, Market, Offering
from provisioner.model import ResourceRow
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


SMALL = "slurm:small:cpu-node:allocation"


def _allocation(oid: str, name: str, granted: float, days: int) -> Offering:
    return Offering(
        id=oid, backend=oid.split(":")[1], provider="slurm", region="batch", instance_type="cpu-node",
        family="slurm:cpu", market=Market.ALLOCATION, cores=32, memory_gb=128, arch=Arch.X86_64,
        price_per_hour=Decimal(0), hs23_per_core=10.0,
        allocation=AllocationInfo(name, "cms", "batch", None, granted, 0.0, D, D + timedelta(days=days)),
    )  # fmt: skip


def _pilot(rid: str, oid: str, **over: Any) -> ResourceRow:
    values: dict[str, Any] = {
        "experiment": "cms", "backend": oid.split(":")[1], "offering_id": oid, "market": "allocation",
        "price_micro_per_hour": 0, "cores": 32, "hs23_per_core": 10.0,
    }  # fmt: skip
    return resource(rid, **(values | over))


def allocation_scenario(session: Session) -> dict[str, Offering]:
    """Two allocations as of 15 October 00:00 (14 days into both):
    maxwell: 900 node-hours over 90 days from 1 October → burn plan 900 × 14/90 = 140. A pilot ran
    1–3 October (48 h), one runs since 13 October 12:00 with 24 h walltime (12 h settled, 12 h in
    flight), one of 10 h is queued: settled 60, in flight 12, committed 10, left 900 − 82 = 818;
    settled + in flight = 72, 68 behind the plan.
    small: 30 over 30 days → plan 14. The same running and queued pilots: settled 12, in flight 12,
    committed 10 = 34 booked of 30 granted: over-committed by 4 (left 0), 24 − 14 = 10 ahead."""
    day = timedelta(days=1)
    running = {"state": "running", "released_at": None, "walltime_hours": 24.0,
               "launched_at": D + 13 * day + timedelta(hours=12)}  # fmt: skip
    queued = {"state": "provisioning", "launched_at": None, "released_at": None, "walltime_hours": 10.0}
    session.add(_pilot("m-done", ALLOC, launched_at=D, released_at=D + 2 * day, walltime_hours=48.0))
    for oid, tag in ((ALLOC, "m"), (SMALL, "s")):
        session.add(_pilot(f"{tag}-run", oid, **running))
        session.add(_pilot(f"{tag}-queued", oid, **queued))
    session.commit()
    build_ledger(session, D, OCT.end, now=NOW)
    return {
        ALLOC: _allocation(ALLOC, "maxwell-2026", 900.0, 90),
        SMALL: _allocation(SMALL, "small-2026", 30.0, 30),
    }


def test_allocations_against_the_burn_plan_on_hand_computed_figures(any_session: Session) -> None:
    offerings = allocation_scenario(any_session)
    report = cost_report(any_session, OCT, offerings=offerings, now=NOW)
    lines = {a.offering_id: a for a in report.allocations}
    maxwell, small = lines[ALLOC], lines[SMALL]
    assert (maxwell.settled, maxwell.in_flight, maxwell.committed, maxwell.left) == (60.0, 12.0, 10.0, 818.0)
    assert maxwell.burn_plan == pytest.approx(140.0) and maxwell.vs_plan == pytest.approx(-68.0)
    assert maxwell.over_committed == 0
    assert (small.settled, small.in_flight, small.committed, small.left) == (12.0, 12.0, 10.0, 0.0)
    assert small.burn_plan == pytest.approx(14.0) and small.vs_plan == pytest.approx(10.0)
    assert small.over_committed == pytest.approx(4.0)
    # one definition of the plan: the console's target (pacing_status) is the report's burn plan
    for oid, line in lines.items():
        info = offerings[oid].allocation
        assert info is not None
        assert pacing_status(info, NOW, Decimal(0)).target_used == line.burn_plan
    # a grant given to the report (not from the policy) moves the plan with it: 450 × 14/90 = 70
    halved = cost_report(any_session, OCT, offerings=offerings, allocations_granted={ALLOC: 450.0}, now=NOW)
    assert {a.offering_id: a.burn_plan for a in halved.allocations}[ALLOC] == pytest.approx(70.0)
    # a grant without its allocation's period: no plan to stand against
    bare = cost_report(any_session, OCT, allocations_granted={ALLOC: 900.0}, now=NOW)
    assert [(a.burn_plan, a.vs_plan) for a in bare.allocations if a.offering_id == ALLOC] == [(None, None)]

    rows = {
        r[0]: dict(zip(ALLOCATION_COLUMNS, r, strict=True)) for r in map(allocation_row, report.allocations)
    }
    assert {k: rows["maxwell-2026"][k] for k in ("left", "burn plan", "vs plan")} == {
        "left": "818.0", "burn plan": "140.0", "vs plan": "-68.0 behind",
    }  # fmt: skip
    assert {k: rows["small-2026"][k] for k in ("left", "burn plan", "vs plan")} == {
        "left": "over-committed by 4.0", "burn plan": "14.0", "vs plan": "+10.0 ahead",
    }  # fmt: skip
    console = Console(record=True, width=250)
    print_report(report, console)
    text = console.export_text(clear=False)
    assert "over-committed by 4.0" in text and "-68.0 behind" in text
    # the over-committed row is red (and bold), the others are not
    styled = console.export_html(inline_styles=False)
    red = set(re.findall(r"\.(r\d+) \{color: #800000", styled))
    cells = {t.strip() for cls, t in re.findall(r'<span class="(r\d+)">([^<]*)</span>', styled) if cls in red}
    assert {"small-2026", "over-committed by 4.0", "+10.0 ahead"} <= cells
    assert "maxwell-2026" not in cells


def test_html_shows_allocations_against_the_burn_plan(session: Session, tmp_path: Path) -> None:
    report = cost_report(session, OCT, offerings=allocation_scenario(session), now=NOW)
    write_csv(report, tmp_path)
    html = write_html(report, tmp_path).read_text()
    assert "<th>burn plan</th>" in html and "<th>vs plan</th>" in html
    over_rows = re.findall(r'<tr class="over">(.*?)</tr>', html)
    assert len(over_rows) == 1 and "small-2026" in over_rows[0] and "over-committed by 4.0" in over_rows[0]
    assert "src='cost_2026-10_allocations.png'" in html
    assert (tmp_path / "cost_2026-10_allocations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "cost_2026-10_allocations.csv").open() as handle:
        csv_rows = {r["offering_id"]: r for r in csv.DictReader(handle)}
    assert csv_rows[SMALL]["node_hours_over_committed"] == "4.0"
    assert (
        csv_rows[ALLOC]["node_hours_burn_plan"] == "140.0"
        and csv_rows[ALLOC]["node_hours_vs_plan"] == "-68.0"
    )

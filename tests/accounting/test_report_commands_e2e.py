"""`provisioner report cost --as-of` and `accounting invoice import` + `report reconcile` run as the
operator runs them: `python -m provisioner.cli` subprocesses on an isolated state dir whose SQLite
database is seeded here in-process (resources and their ledger, dates fixed in October 2026)."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from accounting.ledger import build_ledger
from provisioner.db import make_engine, upgrade
from provisioner.model import ResourceRow
from tests.accounting import test_reconcile as rec
from tests.accounting.test_ledger import resource
from tests.accounting.test_reports import ALLOC, NOW, OCT
from tests.cli_process import isolated_env, run_cli


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(args, isolated_env(tmp_path / "state"), cwd=tmp_path)


def _seeded(tmp_path: Path) -> Session:
    state = tmp_path / "state"
    state.mkdir()
    url = f"sqlite:///{(state / 'provisioner.db').resolve()}"
    upgrade(url)
    return Session(make_engine(url), expire_on_commit=False)


def _figure(out: str, label: str) -> str:
    """The value on the headline row `label` (rich draws the table with box characters)."""
    match = re.search(rf"{re.escape(label)}\s*│\s*(.+?)\s*│", out)
    assert match, f"no {label!r} in:\n{out}"
    return match.group(1)


def test_cost_report_as_of_forecasts_the_running_units_committed_burn(tmp_path: Path) -> None:
    """A $1/h VM running since 14 October 00:00 and a pilot of 24 h walltime running since 14 October
    12:00, reported as of 15 October 00:00: spend $24 (the ledger goes on to 20 October, as if the
    broker had run on: figures after as-of must not count); the VM commits $24 × 17 days = $408 to
    the month end, above the 7-day trend ($24 / 7 × 17 = $58.29), so the forecast is $24 + $408."""
    day = timedelta(days=1)
    live = {"state": "running", "released_at": None}
    with _seeded(tmp_path) as session:
        session.add(resource("vm", price_micro_per_hour=1_000_000, launched_at=OCT.start + 13 * day, **live))
        session.add(
            resource("pilot", backend="maxwell", offering_id=ALLOC, market="allocation", price_micro_per_hour=0,
                     launched_at=OCT.start + 13 * day + timedelta(hours=12), walltime_hours=24.0, **live)
        )  # fmt: skip
        session.commit()
        build_ledger(session, OCT.start, OCT.end, now=NOW + 5 * day)
    got = _cli(tmp_path, "report", "cost", "--month", "2026-10", "--as-of", "2026-10-15T00:00Z")
    assert got.returncode == 0, got.stderr
    out = got.stdout
    assert "Cost report 2026-10, as of 2026-10-15 00:00 UTC" in out
    assert _figure(out, "As of") == "2026-10-15 00:00 UTC"
    assert _figure(out, "Spend") == "$24.00"
    assert _figure(out, "Committed by running units to month end") == "$408.00"
    assert _figure(out, "Forecast month-end spend") == "$432.00"
    assert _figure(out, "Forecast method").startswith("committed: units running now")
    # the pilot as of 15 October 00:00: 12 h settled, 12 h of its walltime in flight
    header = next(line for line in out.splitlines() if "┃ allocation" in line)
    row = next(line for line in out.splitlines() if line.startswith(f"│ {ALLOC}"))
    cells = dict(zip(_cells(header, "┃"), _cells(row, "│"), strict=True))
    assert (cells["settled"], cells["in flight"], cells["committed"]) == ("12.0", "12.0", "0.0")


POLICY = """version = 1

[facility]
horizon_hours = 24

[experiments.cms]
share = 1.0
backends = ["maxwell", "small"]
markets = ["allocation"]
archs = ["x86_64"]
{allocations}
[end]
"""
ALLOCATION = """
[allocations.{name}]
backend = "{backend}"
site = "batch"
account = "cms"
partition = "batch"
node_hours_granted = {granted}
node_hours_used = 0
starts = "{starts}"
ends = "{ends}"
pacing = "even"
max_walltime_hours = 48
max_nodes = 8

[allocations.{name}.node]
name = "cpu-node"
cores = 32
memory_gb = 128
arch = "x86_64"
hs23_per_core = 10.0
"""


def _pilot(rid: str, backend: str, **over: object) -> ResourceRow:
    """A pilot on the policy's allocation offering of `backend` (its id: backend:site:node:market)."""
    values = {"backend": backend, "offering_id": f"{backend}:batch:cpu-node:allocation", "market": "allocation",
              "price_micro_per_hour": 0, "experiment": "cms", "cores": 32, "hs23_per_core": 10.0}  # fmt: skip
    return resource(rid, **(values | over))


# (starts, maxwell's end, small's end): absolute, and relative to the day the policy is read, which
# for a report is its as-of day (15 October), whatever the wall clock says
DATES = {
    "absolute": ("2026-10-01T00:00:00Z", "2026-12-30T00:00:00Z", "2026-10-31T00:00:00Z"),
    "relative": ("today-14d", "today+76d", "today+16d"),
}


@pytest.mark.parametrize("dates", sorted(DATES))
def test_cost_report_shows_allocations_against_the_burn_plan_from_the_policy(
    tmp_path: Path, dates: str
) -> None:
    """The policy's allocations as of 15 October 00:00, 14 days in: maxwell, 900 node-hours over 90
    days → plan 140; settled 48 + 12, in flight 12, committed 10 → 72 run, 68 behind, 818 left.
    small, 30 over 30 days → plan 14; 12 + 12 run (10 ahead) and 10 queued: 34 booked of 30,
    over-committed by 4."""
    starts, maxwell_ends, small_ends = DATES[dates]
    policy = tmp_path / "policy.toml"
    policy.write_text(
        POLICY.format(
            allocations=ALLOCATION.format(name="maxwell-2026", backend="maxwell", granted=900,
                                          starts=starts, ends=maxwell_ends)
            + ALLOCATION.format(name="small-2026", backend="small", granted=30, starts=starts, ends=small_ends)
        )
    )  # fmt: skip
    day = timedelta(days=1)
    running = {"state": "running", "released_at": None, "walltime_hours": 24.0,
               "launched_at": OCT.start + 13 * day + timedelta(hours=12)}  # fmt: skip
    queued = {"state": "provisioning", "launched_at": None, "released_at": None, "walltime_hours": 10.0}
    with _seeded(tmp_path) as session:
        for backend in ("maxwell", "small"):
            session.add(_pilot(f"{backend}-run", backend, **running))
            session.add(_pilot(f"{backend}-queued", backend, **queued))
        session.add(_pilot("maxwell-done", "maxwell", launched_at=OCT.start, released_at=OCT.start + 2 * day,
                           walltime_hours=48.0))  # fmt: skip
        session.commit()
        build_ledger(session, OCT.start, OCT.end, now=NOW)
    got = _cli(tmp_path, "report", "cost", "--month", "2026-10", "--as-of", "2026-10-15T00:00Z",
               "--budgets", str(policy))  # fmt: skip
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    header = _cells(next(line for line in lines if "┃ allocation" in line), "┃")
    rows = {
        cells[0]: dict(zip(header, cells, strict=True))
        for cells in (
            _cells(line, "│") for line in lines if line.startswith(("│ maxwell-2026", "│ small-2026"))
        )
    }
    pick = ("settled", "in flight", "committed", "left", "granted", "burn plan", "vs plan")
    assert [rows["maxwell-2026"][k] for k in pick] == ["60.0", "12.0", "10.0", "818.0", "900", "140.0",
                                                        "-68.0 behind"]  # fmt: skip
    assert [rows["small-2026"][k] for k in pick] == ["12.0", "12.0", "10.0", "over-committed by 4.0", "30",
                                                      "14.0", "+10.0 ahead"]  # fmt: skip


def test_invoice_import_then_reconcile_prints_estimated_invoiced_and_difference(tmp_path: Path) -> None:
    """r-aws-1: 10 h at $0.4032 estimated ($4.032); the CUR bills those 10 h and 10 minutes more
    ($4.0992): +$0.0672 = +1.67 %. The support line, credit, IP, EBS and an untagged instance
    are listed apart; one line (cost 'abc') is refused: exit 1."""
    with _seeded(tmp_path) as session:
        session.add(rec.resource("r-aws-1", "aws", "i-0abc", "atlas", 403_200, 10))
        session.commit()
        build_ledger(session, rec.OCTOBER.start, rec.OCTOBER.end, now=rec.NOW)
    cur = rec.write_cur_csv(tmp_path / "cur.csv", rec.cur_rows())
    imported = _cli(tmp_path, "accounting", "invoice", "import", str(cur))
    assert imported.returncode == 1, imported.stderr
    assert "aws-cur: stored 16 invoice lines for 2026-10" in " ".join(imported.stdout.split())
    assert "line 17: line_item_unblended_cost: not a number: 'abc'" in " ".join(imported.stderr.split())
    got = _cli(tmp_path, "report", "reconcile", "--month", "2026-10")
    assert got.returncode == 0, got.stderr
    out = got.stdout
    # the resource table, read by its header: estimated $4.032 and invoiced $4.0992 in cents
    header = next(line for line in out.splitlines() if "┃ resource" in line)
    row = next(line for line in out.splitlines() if line.startswith("│ r-aws-1"))
    cells = dict(zip(_cells(header, "┃"), _cells(row, "│"), strict=True))
    assert cells == {
        "resource": "r-aws-1", "experiment": "atlas", "backend": "aws", "estimated": "$4.03",
        "invoiced": "$4.10", "difference": "$0.07", "%": "+1.67 %",
    }  # fmt: skip
    # the other invoice lines: $0.0104 + $0.0267 + $0.05 + $10 − $1.50 = $8.5871; total $12.6863
    assert (
        "2026-10: estimated $4.03 vs invoiced $4.10 for the broker's compute and egress: difference $0.07 "
        "(+1.67 %); $8.59 more on the invoice is listed apart; invoice total $12.69"
    ) in " ".join(out.split())


def _cells(line: str, bar: str) -> list[str]:
    return [c.strip() for c in line.strip().strip(bar).split(bar)]

"""End to end on the fake GCE server: `provisioner run` reads each VM's sent_bytes_count from Cloud
Monitoring, and the bytes reach the ledger, `report cost` and the month-to-date egress the running
broker plans with."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import Session, select

from accounting.egress import EGRESS_EVENT
from provisioner.broker import build_broker
from provisioner.bus import InProcessBus
from provisioner.model import EventRow, row_time
from provisioner.settings import Settings
from tests.cli_process import run_cli
from tests.fakes.gce_server import FakeGce

ROOT = Path(__file__).resolve().parents[2]
BROKER_ID = "broker-gce-egress-e2e"
ZONE = "us-central1-a"
SENT_PER_VM = 2_500_000_000  # bytes out each VM's sent_bytes_count reports


def _ok(args: list[str], env: dict[str, str]) -> str:
    done = run_cli(args, env)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_sent_bytes_of_running_vms_reach_ledger_report_and_planner(tmp_path: Path, fake_gce: FakeGce) -> None:
    backends = tmp_path / "backends.toml"
    backends.write_text(
        f"""
[gce]
kind = "gce"
project = "p"
zones = ["{ZONE}"]
api_endpoint = "{fake_gce.url}"
monitoring_endpoint = "{fake_gce.url}"
anonymous = true
poll_interval_seconds = 0.01
"""
    )
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "GOOGLE_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PROVISIONER_STATE_DIR": str(state),
            "PROVISIONER_BROKER_ID": BROKER_ID,
            "PROVISIONER_BACKENDS_FILE": str(backends),
        }
    )
    _ok(["request", "create", "--experiment", "atlas", "--cores", "16", "--duration", "2h"], env)
    _ok(["run", "--cycles", "2", "--interval", "1"], env)
    vms = [name for (zone, name), body in fake_gce.instances.items() if body["status"] == "RUNNING"]
    assert vms, "the broker created GCE VMs for the request"
    for name in vms:
        fake_gce.send_bytes(ZONE, name, SENT_PER_VM, datetime.now(UTC))
    _ok(["run", "--cycles", "1", "--interval", "1"], env)

    sent_gb = len(vms) * SENT_PER_VM / 1e9
    broker = build_broker(
        Settings(state_dir=state, broker_id=BROKER_ID, backends_file=backends), bus=InProcessBus()
    )
    try:
        with Session(broker.db) as db:
            events = list(db.exec(select(EventRow).where(EventRow.kind == EGRESS_EVENT)))
        assert [e.payload["bytes"] - e.payload["previous"] for e in events] == [SENT_PER_VM] * len(vms)
        seen = row_time(events[-1].at)
        assert seen is not None
        month = seen.strftime("%Y-%m")  # the month the bytes were seen in: the test may cross a month's end
        as_of = seen + timedelta(seconds=1)
        used = broker.constraints.egress_so_far(as_of)
        assert used["gce:us-central1"] == pytest.approx(sent_gb)
        assert used["atlas/monthly"] == pytest.approx(sent_gb)  # examples/policy.toml caps atlas monthly
    finally:
        broker.db.dispose()

    assert f"{len(vms)} egress rows" in _ok(["accounting", "ledger", "--month", month], env)
    out = tmp_path / "reports"
    report = ["report", "cost", "--month", month, "--format", "csv", "--out", str(out)]
    _ok([*report, "--as-of", as_of.isoformat()], env)
    (atlas,) = [r for r in _rows(out / f"cost_{month}_by_experiment.csv") if r["experiment"] == "atlas"]
    assert float(atlas["egress_gb"]) == pytest.approx(sent_gb)
    (gce,) = [r for r in _rows(out / f"cost_{month}_by_backend.csv") if r["backend"] == "gce"]
    assert float(gce["egress_gb"]) == pytest.approx(sent_gb)
    summary = {r["figure"]: r["value"] for r in _rows(out / f"cost_{month}_summary.csv")}
    # us-central1's internet tiers (data/egress_tiers.csv): $0.12/GB up to 1 TiB.
    expected = Decimal(str(sent_gb)) * Decimal("0.12")
    assert Decimal(summary["Egress spend"].lstrip("$").replace(",", "")) == expected.quantize(Decimal("0.01"))

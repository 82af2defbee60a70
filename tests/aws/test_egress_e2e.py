"""End to end on moto: `provisioner run` reads each EC2 instance's NetworkOut from CloudWatch, and the
bytes reach the ledger, `report cost` and the month-to-date egress the running broker plans with."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
from sqlmodel import Session, select

from accounting.egress import EGRESS_EVENT
from provisioner.broker import build_broker
from provisioner.bus import InProcessBus
from provisioner.model import EventRow, row_time
from provisioner.settings import Settings
from tests.aws.conftest import KEY_ID, REGION, SECRET, aws_backends_table
from tests.cli_process import run_cli

pytestmark = pytest.mark.moto

ROOT = Path(__file__).resolve().parents[2]
BROKER_ID = "broker-egress-e2e"
SENT_PER_INSTANCE = 2.5e9  # bytes out each instance's NetworkOut reports


def _ok(args: list[str], env: dict[str, str]) -> str:
    done = run_cli(args, env)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_networkout_of_running_instances_reaches_ledger_report_and_planner(
    tmp_path: Path, moto: str, amis: dict[str, str], credentials_file: Path
) -> None:
    backends = tmp_path / "backends.toml"
    backends.write_text(aws_backends_table(moto, amis, credentials_file))
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "AWS_"))}
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

    # EC2's basic monitoring, as moto cannot: one NetworkOut datapoint per instance, stamped now.
    session = boto3.Session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name=REGION)
    ec2 = session.client("ec2", endpoint_url=moto)
    cw = session.client("cloudwatch", endpoint_url=moto)
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "tag:provisioner-broker", "Values": [BROKER_ID]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )["Reservations"]
    ids = [i["InstanceId"] for r in reservations for i in r["Instances"]]
    assert ids, "the broker launched EC2 instances for the request"
    for iid in ids:
        cw.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "NetworkOut",
                    "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                    "Timestamp": datetime.now(UTC),
                    "Value": SENT_PER_INSTANCE,
                    "Unit": "Bytes",
                }
            ],
        )
    _ok(["run", "--cycles", "1", "--interval", "1"], env)

    sent_gb = len(ids) * SENT_PER_INSTANCE / 1e9
    settings = Settings(state_dir=state, broker_id=BROKER_ID, backends_file=backends)
    broker = build_broker(settings, bus=InProcessBus())
    try:
        with Session(broker.db) as db:
            events = list(db.exec(select(EventRow).where(EventRow.kind == EGRESS_EVENT)))
        assert len(events) == len(ids)  # one counter move per instance
        moved = [e.payload["bytes"] - e.payload["previous"] for e in events]
        assert moved == [int(SENT_PER_INSTANCE)] * len(ids)
        seen = row_time(events[-1].at)
        assert seen is not None
        # The month the bytes were seen in, not the wall clock's: the test may cross a month's end.
        month = seen.strftime("%Y-%m")
        as_of = seen + timedelta(seconds=1)
        # What the running broker hands the planner: GB sent this month from the region (its tiers)
        # and by the experiment in each period it has an egress cap (examples/policy.toml: monthly).
        used = broker.constraints.egress_so_far(as_of)
        assert used[f"aws:{REGION}"] == pytest.approx(sent_gb)
        assert used["atlas/monthly"] == pytest.approx(sent_gb)
    finally:
        broker.db.dispose()

    ledger = _ok(["accounting", "ledger", "--month", month], env)
    assert f"{len(ids)} egress rows" in ledger
    out = tmp_path / "reports"
    report = ["report", "cost", "--month", month, "--format", "csv", "--out", str(out)]
    _ok([*report, "--as-of", as_of.isoformat()], env)
    (atlas,) = [r for r in _rows(out / f"cost_{month}_by_experiment.csv") if r["experiment"] == "atlas"]
    assert float(atlas["egress_gb"]) == pytest.approx(sent_gb)
    (aws,) = [r for r in _rows(out / f"cost_{month}_by_backend.csv") if r["backend"] == "aws"]
    assert float(aws["egress_gb"]) == pytest.approx(sent_gb)
    summary = {r["figure"]: r["value"] for r in _rows(out / f"cost_{month}_summary.csv")}
    # us-east-1's internet tiers (data/egress_tiers.csv): the first GB free, then $0.09/GB.
    expected = (Decimal(str(sent_gb)) - 1) * Decimal("0.09")
    assert Decimal(summary["Egress spend"].lstrip("$").replace(",", "")) == expected.quantize(Decimal("0.01"))

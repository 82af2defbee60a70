"""Provider invoices (AWS CUR 2.0, GCP billing export) reconciled with the ledger per resource."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from accounting.invoice import InvoiceFormat, parse_invoice, tag_key
from accounting.ledger import build_ledger
from accounting.period import Month
from accounting.reconcile import reconcile, store_lines
from provisioner.model import ResourceRow

OCTOBER = Month(2026, 10)
T0 = datetime(2026, 10, 2, tzinfo=UTC)
NOW = datetime(2026, 11, 2, tzinfo=UTC)

CUR_COLUMNS = [
    "identity_line_item_id", "identity_time_interval", "bill_billing_period_start_date",
    "line_item_usage_account_id", "line_item_line_item_type", "line_item_usage_start_date",
    "line_item_usage_end_date", "line_item_product_code", "line_item_usage_type", "line_item_operation",
    "line_item_resource_id", "line_item_usage_amount", "line_item_unblended_cost", "line_item_currency_code",
    "resource_tags",
]  # fmt: skip


def resource(
    rid: str, backend: str, provider_id: str, experiment: str, price_micro: int, hours: int
) -> ResourceRow:
    return ResourceRow(
        id=rid,
        backend=backend,
        offering_id=f"{backend}:region:type:on_demand",
        market="on_demand",
        experiment=experiment,
        state="released",
        idempotency_token=rid,
        provider_id=provider_id,
        price_micro_per_hour=price_micro,
        cores=8,
        hs23_per_core=16.0,
        busy=True,
        created_at=T0,
        updated_at=T0,
        state_since=T0,
        launched_at=T0,
        released_at=T0 + timedelta(hours=hours),
    )


def cur_row(n: int, start: datetime, usage_type: str, cost: str, **over: Any) -> dict[str, Any]:
    row = {
        "identity_line_item_id": f"li-{n}",
        "identity_time_interval": f"{start:%Y-%m-%dT%H:%M:%SZ}/{start + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
        "bill_billing_period_start_date": "2026-10-01T00:00:00.000Z",
        "line_item_usage_account_id": "123456789012",
        "line_item_line_item_type": "Usage",
        "line_item_usage_start_date": f"{start:%Y-%m-%dT%H:%M:%S.000Z}",
        "line_item_usage_end_date": f"{start + timedelta(hours=1):%Y-%m-%dT%H:%M:%S.000Z}",
        "line_item_product_code": "AmazonEC2",
        "line_item_usage_type": usage_type,
        "line_item_operation": "RunInstances",
        "line_item_resource_id": "i-0abc",
        "line_item_usage_amount": "1.0",
        "line_item_unblended_cost": cost,
        "line_item_currency_code": "USD",
        "resource_tags": json.dumps(
            {"user_provisioner_resource": "r-aws-1", "user_provisioner_experiment": "atlas"}
        ),
    }
    return row | over


def cur_rows() -> list[dict[str, Any]]:
    rows = [cur_row(h, T0 + timedelta(hours=h), "USE1-BoxUsage:m7i.2xlarge", "0.4032") for h in range(10)]
    # billed 10 minutes past the broker's release: the broker saw the stop late
    rows.append(cur_row(10, T0 + timedelta(hours=10), "USE1-BoxUsage:m7i.2xlarge", "0.0672"))
    rows += [
        cur_row(11, T0, "USE1-EBS:VolumeUsage.gp3", "0.0267", line_item_resource_id="vol-1"),
        cur_row(12, T0, "USE1-PublicIPv4:InUseAddress", "0.0500"),
        cur_row(
            13,
            T0,
            "Business",
            "10.00",
            line_item_product_code="AWSSupportBusiness",
            line_item_resource_id="",
            resource_tags="{}",
        ),
        cur_row(
            14,
            T0,
            "",
            "-1.50",
            line_item_line_item_type="Credit",
            line_item_resource_id="",
            resource_tags="{}",
        ),
        cur_row(
            15, T0, "USE1-BoxUsage:t3.micro", "0.0104", line_item_resource_id="i-999", resource_tags="{}"
        ),
        cur_row(16, T0, "USE1-BoxUsage:m7i.2xlarge", "abc"),
    ]
    return rows


def write_cur_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        w = csv.DictWriter(handle, CUR_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def gcp_rows() -> list[dict[str, Any]]:
    labels = [
        {"key": "provisioner-resource", "value": "r-gce-1"},
        {"key": "provisioner-experiment", "value": "cms"},
    ]
    name = "projects/demo/zones/us-central1-a/instances/prov-r-gce-1"
    rows = []
    for h in range(5):
        start = T0 + timedelta(hours=h)
        rows.append(
            {
                "billing_account_id": "01ABCD-000000-000000",
                "service": {"id": "6F81-5844-456A", "description": "Compute Engine"},
                "sku": {"id": "CF4E-A0C7-E3BF", "description": "N2 Instance Core running in Americas"},
                "usage_start_time": start.isoformat(),
                "usage_end_time": (start + timedelta(hours=1)).isoformat(),
                "project": {"id": "demo"},
                "labels": labels,
                "resource": {"name": name, "global_name": "//compute.googleapis.com/" + name},
                "cost": 0.2,
                "currency": "USD",
                "cost_type": "regular",
                "usage": {"amount_in_pricing_units": 8.0, "pricing_unit": "hour"},
                "credits": [
                    {"name": "Sustained usage discount", "amount": -0.01, "type": "SUSTAINED_USAGE_DISCOUNT"}
                ],
            }
        )
    rows.append(
        {
            "service": {"description": "Compute Engine"},
            "sku": {"description": "Storage PD Capacity"},
            "usage_start_time": T0.isoformat(),
            "usage_end_time": (T0 + timedelta(hours=5)).isoformat(),
            "labels": labels,
            "resource": {"name": "projects/demo/zones/us-central1-a/disks/prov-r-gce-1"},
            "cost": 0.011,
            "currency": "USD",
            "cost_type": "regular",
            "credits": [],
        }
    )
    return rows


@pytest.fixture
def fleet(session: Session) -> Session:
    session.add(resource("r-aws-1", "aws", "i-0abc", "atlas", 403_200, 10))
    session.add(resource("r-gce-1", "gce", "us-central1-a/prov-r-gce-1", "cms", 200_000, 5))
    session.add(resource("r-aws-2", "aws", "i-0def", "atlas", 100_000, 2))  # never invoiced
    session.commit()
    build_ledger(session, OCTOBER.start, OCTOBER.end, now=NOW)
    return session


def test_tag_keys_of_cur_and_gce_read_alike() -> None:
    assert tag_key("user_provisioner_resource") == tag_key("provisioner-resource") == "provisioner_resource"
    assert tag_key("user:Provisioner-Resource") == "provisioner_resource"


def test_cur_lines_are_categorised_and_a_bad_line_is_refused_naming_its_column(tmp_path: Path) -> None:
    parsed = parse_invoice(write_cur_csv(tmp_path / "cur.csv", cur_rows()))
    assert parsed.format is InvoiceFormat.AWS_CUR
    assert [str(p) for p in parsed.problems] == ["line 17: line_item_unblended_cost: not a number: 'abc'"]
    categories = [ln.category for ln in parsed.lines]
    assert categories == ["compute"] * 11 + ["storage", "ip", "support", "credit", "compute"]
    assert parsed.lines[0].tags["provisioner_resource"] == "r-aws-1"
    assert parsed.lines[0].usage_start == T0


def test_cur_parquet_reads_like_csv(tmp_path: Path) -> None:
    rows = cur_rows()[:-1]
    csv_path = write_cur_csv(tmp_path / "cur.csv", rows)
    parquet = tmp_path / "cur.parquet"
    con = duckdb.connect()
    con.execute(
        f"""COPY (SELECT * REPLACE (
                CAST(line_item_usage_start_date AS TIMESTAMP) AS line_item_usage_start_date,
                CAST(line_item_usage_end_date AS TIMESTAMP) AS line_item_usage_end_date,
                CAST(line_item_unblended_cost AS DOUBLE) AS line_item_unblended_cost,
                CAST(resource_tags::JSON AS MAP(VARCHAR, VARCHAR)) AS resource_tags)
            FROM read_csv('{csv_path}', all_varchar = true)) TO '{parquet}' (FORMAT parquet)"""
    )
    from_csv, from_parquet = parse_invoice(csv_path), parse_invoice(parquet)
    assert not from_parquet.problems
    key = [
        (ln.line_key, ln.category, ln.amount_micro, ln.usage_start, dict(ln.tags)) for ln in from_csv.lines
    ]
    assert [
        (ln.line_key, ln.category, ln.amount_micro, ln.usage_start, dict(ln.tags))
        for ln in from_parquet.lines
    ] == key


def test_gcp_export_credits_become_their_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "gcp.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in gcp_rows()) + "\n")
    parsed = parse_invoice(path)
    assert parsed.format is InvoiceFormat.GCP_BILLING and not parsed.problems
    assert [ln.category for ln in parsed.lines].count("credit") == 5
    assert sum(ln.amount_micro for ln in parsed.lines) == 5 * (200_000 - 10_000) + 11_000


def test_reconciliation_compares_broker_compute_and_lists_the_rest_apart(
    fleet: Session, tmp_path: Path
) -> None:
    cur = parse_invoice(write_cur_csv(tmp_path / "cur.csv", cur_rows()))
    gcp_path = tmp_path / "gcp.jsonl"
    gcp_path.write_text("\n".join(json.dumps(r) for r in gcp_rows()) + "\n")
    gcp = parse_invoice(gcp_path)
    store_lines(fleet, cur.lines, "cur.csv")
    store_lines(fleet, gcp.lines, "gcp.jsonl")
    store_lines(fleet, cur.lines, "cur.csv")  # importing again changes nothing
    rec = reconcile(fleet, OCTOBER)
    rows = {c.key[0]: c for c in rec.by_resource}
    aws = rows["r-aws-1"]
    assert (aws.estimated_micro, aws.invoiced_micro, aws.invoice_lines) == (4_032_000, 4_099_200, 11)
    assert aws.difference_pct == pytest.approx(100 * 67_200 / 4_032_000)
    assert (rows["r-gce-1"].estimated_micro, rows["r-gce-1"].invoiced_micro) == (1_000_000, 1_000_000)
    assert (rows["r-aws-2"].estimated_micro, rows["r-aws-2"].invoiced_micro) == (200_000, 0)  # never invoiced
    assert {c.key[0]: c.invoiced_micro for c in rec.by_backend} == {"aws": 4_099_200, "gce": 1_000_000}
    assert {c.key[0] for c in rec.by_experiment} == {"atlas", "cms"}
    apart = {(u.category, u.usage_type): u.amount_micro for u in rec.unestimated}
    assert apart == {
        ("storage", "USE1-EBS:VolumeUsage.gp3"): 26_700,
        ("ip", "USE1-PublicIPv4:InUseAddress"): 50_000,
        ("support", "Business"): 10_000_000,
        ("credit", ""): -1_500_000,
        ("compute", "USE1-BoxUsage:t3.micro"): 10_400,
        ("credit", "Sustained usage discount"): -50_000,
        ("storage", "Storage PD Capacity"): 11_000,
    }
    assert rec.total.invoiced_micro + rec.unestimated_micro == rec.invoice_total_micro
    assert all(u.why for u in rec.unestimated)


def test_cli_imports_an_invoice_and_shows_the_reconciliation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.cli import app
    from provisioner.db import make_engine, upgrade

    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(state))
    monkeypatch.delenv("PROVISIONER_DATABASE_URL", raising=False)
    url = f"sqlite:///{(state / 'provisioner.db').resolve()}"
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        session.add(resource("r-aws-1", "aws", "i-0abc", "atlas", 403_200, 10))
        session.commit()
        build_ledger(session, OCTOBER.start, OCTOBER.end, now=NOW)
    engine.dispose()
    runner = CliRunner()
    result = runner.invoke(
        app, ["accounting", "invoice", "import", str(write_cur_csv(tmp_path / "cur.csv", cur_rows()))]
    )
    assert result.exit_code == 1  # one line refused
    assert "stored 16 invoice lines for 2026-10" in result.output
    assert "line 17: line_item_unblended_cost: not a number" in result.output
    result = runner.invoke(app, ["report", "reconcile", "--month", "2026-10"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "r-aws-1" in result.output and "+1.67 %" in result.output
    assert "support" in result.output and "listed apart" in result.output
    result = runner.invoke(
        app, ["report", "reconcile", "--month", "2026-10", "--format", "csv", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "r" / "reconcile_2026-10_by_resource.csv").open() as handle:
        assert next(csv.DictReader(handle))["invoiced_usd"] == "4.0992"

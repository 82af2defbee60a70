"""`provisioner offerings` through typer's CliRunner on the real root app."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.cli import app

runner = CliRunner()


def _json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["offerings", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert isinstance(data, dict)
    return data


def test_filters_reach_the_catalog_and_the_match_count_is_reported() -> None:
    data = _json(
        "--arch", "arm64", "--market", "spot", "--provider", "aws", "--min-cores", "16", "--limit", "0"
    )
    offerings = data["offerings"]
    assert isinstance(offerings, list)
    assert data["matched"] == len(offerings) > 0
    for o in offerings:
        assert o["arch"] == "arm64" and o["market"] == "spot" and o["provider"] == "aws"
        assert o["cores"] >= 16


def test_gpu_model_and_region_and_max_price_narrow_the_listing() -> None:
    data = _json("--gpu-model", "a100", "--region", "us-central1", "--max-price", "20", "--limit", "0")
    offerings = data["offerings"]
    assert isinstance(offerings, list) and offerings
    for o in offerings:
        assert o["gpu_model"] == "A100" and o["region"] == "us-central1"
        assert Decimal(o["price_per_hour"]) <= 20
    assert all(o["gpu_count"] == 0 for o in _json("--no-gpu", "--limit", "50")["offerings"])


@pytest.mark.parametrize(("sort", "key"), [("price", "price_per_hour"), ("hs23-price", "usd_per_hs23_hour")])
def test_sorting_puts_the_cheapest_first_and_limit_cuts_the_list(sort: str, key: str) -> None:
    data = _json("--provider", "gce", "--sort", sort, "--limit", "25")
    offerings = data["offerings"]
    assert isinstance(offerings, list) and len(offerings) == 25
    assert isinstance(data["matched"], int) and data["matched"] > 25
    values = [Decimal(o[key]) for o in offerings]
    assert values == sorted(values)


def test_csv_output_has_a_header_and_one_row_per_offering() -> None:
    result = runner.invoke(app, ["offerings", "--gpu", "--limit", "7", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 7
    assert all(int(row["gpu_count"]) > 0 and row["id"] for row in rows)


def test_table_output_shows_the_match_count_and_cost_per_hs23_hour() -> None:
    result = runner.invoke(
        app,
        ["offerings", "--region", "us-east-1", "--market", "on_demand", "--limit", "3"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "matching offerings" in result.output
    assert "$/HS23-h" in result.output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--market", "preemptible"], "--market"),
        (["--arch", "sparc"], "--arch"),
        (["--region", "mars-1"], "--region"),
        (["--gpu-model", "Voodoo2"], "--gpu-model"),
        (["--provider", "azure"], "--provider"),
        (["--max-price", "cheap"], "--max-price"),
        (["--sort", "fastest"], "--sort"),
    ],
)
def test_bad_input_is_refused_naming_the_option(args: list[str], option: str) -> None:
    result = runner.invoke(app, ["offerings", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert option in result.output

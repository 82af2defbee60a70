"""`provisioner request create` with hostile values: a message naming the field and exit 2, no traceback, nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner.cli import app


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--cores", "8", "--duration", "infh"], "duration_hours"),
        (["--cores", "8", "--duration", "1e-300h"], "duration_hours"),
        (["--cores", "8", "--duration", "1e308h"], "duration_hours"),
        (["--cores", "8", "--duration", "2h", "--max-cost", "Infinity"], "max_cost_usd"),
        (["--cores", "8", "--duration", "2h", "--max-cost", "1e30"], "max_cost_usd"),
        (["--cores", "8", "--hs23-hours", "nan"], "hs23_hours"),
        (["--cores", "8", "--duration", "2h", "--input-gb", "inf"], "input_gb"),
        (["--cores", "8", "--hs23-hours", "100", "--keep-shape"], "keep_shape"),
    ],
)
def test_hostile_values_name_the_field_and_store_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], field: str
) -> None:
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("PROVISIONER_DATABASE_URL", raising=False)
    result = CliRunner().invoke(
        app, ["request", "create", "--experiment", "atlas", *args], terminal_width=300
    )
    assert result.exit_code == 2, result.output
    flag = "--" + field.removesuffix("_usd").removesuffix("_hours").replace("_", "-")
    named = field in result.output or f"'{flag}'" in result.output or "'--duration'" in result.output
    assert ("invalid request" in result.output or "Invalid value" in result.output) and named, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "provisioner.db").exists()  # no broker was even built: nothing stored


def test_a_huge_experiment_name_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(
        app, ["request", "create", "--experiment", "a" * 100_000, "--cores", "8", "--duration", "1h"]
    )
    assert result.exit_code == 2 and "experiment" in result.output and len(result.output) < 5_000

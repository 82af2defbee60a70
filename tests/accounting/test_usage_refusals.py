"""`accounting import` refuses bad records one by one, each with its reason; the good ones are imported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from accounting.usage_text import parse_usage_text

GOOD: dict[str, Any] = {
    "record_key": "UKI-TEST:job:1", "kind": "job", "experiment": "atlas", "site": "UKI-TEST",
    "submit_host": "ce01", "backend": "aws", "start_time": "2026-10-02T10:00:00Z",
    "end_time": "2026-10-02T12:00:00Z", "wall_seconds": 7200, "cpu_seconds": 50000, "cores": 8,
    "hs23_per_core": 12.5, "resource_id": "r-1",
}  # fmt: skip

# (change to a good record, the field the refusal must name); None as a value drops the key
BAD: list[tuple[dict[str, Any], str]] = [
    ({"start_time": None}, "start_time"),
    ({"start_time": "yesterday"}, "start_time"),
    ({"start_time": "2026-10-02T10:00:00"}, "start_time"),  # no timezone
    ({"start_time": float("inf")}, "start_time"),
    ({"start_time": 1e300}, "start_time"),
    ({"start_time": -5}, "start_time"),
    ({"end_time": [1]}, "end_time"),
    ({"end_time": "2026-10-01T00:00:00Z"}, "end_time"),  # before start
    ({"wall_seconds": "a lot"}, "wall_seconds"),
    ({"wall_seconds": 10**30}, "wall_seconds"),
    ({"wall_seconds": 1.5}, "wall_seconds"),
    ({"cpu_seconds": -1}, "cpu_seconds"),
    ({"cpu_seconds": float("nan")}, "cpu_seconds"),
    ({"cores": 0}, "cores"),
    ({"cores": "eight"}, "cores"),
    ({"cores": None}, "cores"),
    ({"hs23_per_core": float("inf")}, "hs23_per_core"),
    ({"hs23_per_core": "fast"}, "hs23_per_core"),
    ({"kind": "spaceship"}, "kind"),
    ({"kind": 7}, "kind"),
    ({"experiment": ""}, "experiment"),
    ({"experiment": None}, "experiment"),
    ({"site": ""}, "site"),
    ({"record_key": None}, "record_key"),
    ({"colour": "red"}, "colour"),
    ({"nodes": 0}, "nodes"),
    ({"memory_kb": 10**40}, "memory_kb"),
    ({"experiment": "x" * 5000}, "experiment"),
]


def bad_record(change: dict[str, Any], n: int) -> dict[str, Any]:
    record = {**GOOD, "record_key": f"UKI-TEST:job:bad{n}", "resource_id": f"r-bad{n}"}
    for key, value in change.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def test_twenty_eight_bad_records_are_refused_one_by_one_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.cli import app

    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("PROVISIONER_DATABASE_URL", raising=False)
    lines = [json.dumps(GOOD)] + [json.dumps(bad_record(change, n)) for n, (change, _) in enumerate(BAD)]
    lines += [
        "{not json",
        "[1, 2]",
        json.dumps({**GOOD, "record_key": "UKI-TEST:job:2", "resource_id": "r-2"}),
    ]
    usage = tmp_path / "usage.jsonl"
    usage.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["accounting", "import", str(usage)], terminal_width=300)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "imported 2 usage records" in result.output
    assert "Traceback" not in result.output
    for n, (_, field) in enumerate(BAD):
        key = f"UKI-TEST:job:bad{n}" if field != "record_key" else f"line {n + 2}"
        assert any(key in line and f": {field}" in line for line in result.output.splitlines()), (n, field)
    assert "line 30" in result.output and "json" in result.output  # "{not json"
    assert "line 31" in result.output and "expected a JSON object" in result.output


def test_a_json_array_file_is_read_record_by_record() -> None:
    text = json.dumps([GOOD, bad_record({"cores": 0}, 1), "nonsense"])
    records, problems = parse_usage_text(text)
    assert [r.record_key for r in records] == ["UKI-TEST:job:1", "UKI-TEST:job:bad1"]
    assert [p.field for p in problems] == ["record"]  # cores=0 is a validate_record problem, left to import

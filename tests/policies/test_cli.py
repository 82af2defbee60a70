"""`provisioner policy check|show`: green summary or red problems, and the exit code says which."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from provisioner.cli import policy as policy_cli

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.toml"
DATA = Path(__file__).parent / "data"


def _app() -> typer.Typer:
    root = typer.Typer()
    policy_cli.register(root)

    @root.callback()
    def _root() -> None:  # keeps "policy" a sub-command even when it is the only one
        pass

    return root


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(_app(), list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_check_of_a_valid_file_exits_0_with_a_summary() -> None:
    code, out = run("policy", "check", str(EXAMPLE))
    assert code == 0, out
    assert "is valid" in out and "2 experiments, 2 allocations, 1 backfill pools" in out
    assert "perlmutter:regular:cpu-milan:allocation" in out and "$50,000.00" in out


def test_check_of_a_broken_file_exits_1_listing_every_problem() -> None:
    code, out = run("policy", "check", str(DATA / "many_problems.toml"))
    assert code == 1
    assert "6 problems" in out and "nothing was applied" in out
    assert "many_problems.toml:4: facility.horizon_hour: unknown key 'horizon_hour'; did you mean" in out


def test_check_of_a_missing_file_exits_1() -> None:
    code, out = run("policy", "check", str(DATA / "absent.toml"))
    assert code == 1 and "cannot read" in out


def test_show_prints_budgets_net_of_spend_and_allocation_values() -> None:
    code, out = run(
        "policy", "show", str(EXAMPLE), "--now", "2026-11-23T12:00:00", "--spend", "atlas=12000",
        "--spend", "lsst/weekly=9500", "--egress", "aws:us-east-1=5000",
    )  # fmt: skip
    assert code == 0, out
    assert "$38,000.00" in out and "$500.00" in out
    assert "polaris:prod:a100x4:allocation" in out and "asap" in out
    assert "5,000 GB" in out


def test_show_after_an_allocation_ends_marks_it_not_offered(tmp_path: Path) -> None:
    # a site's real, absolute dates: polaris's grant ends on 2026-11-30
    absolute = tmp_path / "policy.toml"
    absolute.write_text(
        EXAMPLE.read_text()
        .replace('starts = "today-175d"', "starts = 2026-06-01")
        .replace('ends = "today+7d"', "ends = 2026-11-30")
    )
    code, out = run("policy", "show", str(absolute), "--now", "2026-12-01T00:00:00+00:00")
    assert code == 0, out
    assert "not offered" in out
    code, out = run("policy", "show", str(absolute), "--now", "2026-11-29T00:00:00+00:00")
    assert code == 0 and "not offered" not in out


def test_show_counts_relative_dates_from_now_so_the_example_never_expires() -> None:
    for now in ("2026-12-01T00:00:00+00:00", "2031-07-01T00:00:00+00:00"):
        code, out = run("policy", "show", str(EXAMPLE), "--now", now)
        assert code == 0, out
        assert "not offered" not in out and "polaris:prod:a100x4:allocation" in out


def test_show_rejects_a_malformed_spend_option() -> None:
    code, out = run("policy", "show", str(EXAMPLE), "--spend", "atlas:lots")
    assert code == 2 and "KEY=NUMBER" in out

"""The two front doors: `provisioner demo` end to end, and `provisioner plan` / `request` on embedded defaults."""

from __future__ import annotations

import asyncio
import io
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import Session, select
from typer.testing import CliRunner

from provisioner.cli import app
from provisioner.demo import run_demo
from provisioner.model import BurstRequestRow, ResourceRow


def test_demo_serves_the_admitted_requests_within_budget_and_rejects_the_gpu_grab(tmp_path: Path) -> None:
    out = io.StringIO()
    totals = asyncio.run(run_demo(Console(file=out, width=160), hours=10, state_dir=tmp_path))
    text = out.getvalue()
    assert "rejected: 128 GPUs asked, the policy allows lsst at most 64" in text
    assert "cost summary" in text
    # the demo closes the month: usage imported without problems, APEL messages queued, a finance page
    assert "(0 problems)" in text
    assert list((tmp_path / "accounting" / "apel-outgoing").rglob("*"))
    assert (tmp_path / "accounting" / "cost_2026-11.html").is_file()
    # money was spent on real (simulated) capacity, and within the example policy's monthly budgets
    assert Decimal(0) < totals["atlas"] <= Decimal(50_000)
    assert totals.get("lsst", Decimal(0)) <= Decimal(30_000)
    from provisioner.db import make_engine

    db = make_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    with Session(db) as session:
        requests = {
            r.spec["experiment"] + str(r.spec.get("gpus")): r for r in session.exec(select(BurstRequestRow))
        }
        resources = list(session.exec(select(ResourceRow)))
    assert requests["atlasNone"].status == "done"  # the CPU burst ran to completion
    assert requests["lsst128"].status == "rejected"
    # every resource the burst got is tied to it, and every unit ended in a final or live state the table knows
    burst = [r for r in resources if r.request_id == requests["atlasNone"].id]
    assert burst and all(r.market in {"spot", "on_demand"} for r in burst)
    assert {r.state for r in resources} <= {"running", "draining", "released", "provisioning", "requested"}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def test_plan_with_no_work_says_nothing_to_do_and_changes_nothing(env: Path) -> None:
    result = CliRunner().invoke(app, ["plan"])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    from provisioner.db import make_engine

    with Session(make_engine(f"sqlite:///{env / 'provisioner.db'}")) as session:
        assert session.exec(select(ResourceRow)).all() == []


def test_request_then_plan_shows_the_choice_and_why_not_the_cheaper_arm(env: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(
        app,
        [
            "request",
            "create",
            "--experiment",
            "atlas",
            "--cores",
            "256",
            "--duration",
            "4h",
            "--data-location",
            "aws:us-east-1",
            "--input-gb",
            "500",
            "--max-cost",
            "500",
        ],
    )
    assert created.exit_code == 0, created.output
    assert "admitted" in created.output and "estimated $" in created.output
    plan = runner.invoke(app, ["plan"])
    assert plan.exit_code == 0, plan.output
    assert "request:req-" in plan.output
    assert "wrong architecture" in plan.output  # the x86-only burst explains why ARM was not taken
    listed = runner.invoke(app, ["request", "list"])
    assert "admitted" in listed.output and "atlas" in listed.output


def test_rejected_request_exits_non_zero_with_the_reason(env: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "request",
            "create",
            "--experiment",
            "lsst",
            "--gpus",
            "128",
            "--gpu-model",
            "H100",
            "--duration",
            "4h",
        ],
    )
    assert result.exit_code == 1
    assert "at most 64" in result.output


def test_bad_request_names_the_field(env: Path) -> None:
    result = CliRunner().invoke(
        app, ["request", "create", "--experiment", "atlas", "--cores", "12", "--duration", "1h"]
    )
    assert result.exit_code == 2
    assert "multiple of cores_per_job" in result.output

"""Kill the broker for real (SIGKILL) at each step of provisioning, restart it: nothing leaked, nothing doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backends.base import TAG_RESOURCE
from backends.simulated import SimulatedCloud
from provisioner.clock import SystemClock
from provisioner.db import make_engine
from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.store import Store
from tests.engine.crash_worker import BROKER, OFFERING

ROOT = Path(__file__).resolve().parents[2]
JOBS = 4


def worker(
    db_url: str, state: Path, *, crash_at: str | None, cycles: int
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROVISIONER_CRASH_AT"}
    env["PYTHONPATH"] = str(ROOT)
    if crash_at:
        env["PROVISIONER_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "tests.engine.crash_worker", "--db", db_url, "--state", str(state)]
    cmd += ["--jobs", str(JOBS), "--cycles", str(cycles)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash_at", ["after_intent", "after_call", "after_record"])
async def test_restart_after_a_kill_at_each_step_leaks_and_doubles_nothing(
    crash_at: str, database_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "cloud.json"
    killed = worker(database_url, state, crash_at=crash_at, cycles=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    db = make_engine(database_url)
    store = Store(db, SystemClock(), BROKER)
    cloud = SimulatedCloud("cloud", [OFFERING], SystemClock(), broker_id=BROKER, state_file=state)
    try:
        [victim] = store.resources()
        expected_state = ResourceState.PROVISIONING if crash_at == "after_record" else ResourceState.REQUESTED
        assert victim.state == expected_state
        assert len(cloud.units) == (0 if crash_at == "after_intent" else 1)

        restarted = worker(database_url, state, crash_at=None, cycles=2)
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        result = json.loads(restarted.stdout.strip().splitlines()[-1])
        if crash_at != "after_record":
            assert result["resumed"] == [victim.id]  # retried with the same token, not replaced

        cloud = SimulatedCloud("cloud", [OFFERING], SystemClock(), broker_id=BROKER, state_file=state)
        rows = store.resources()
        live_rows = [r for r in rows if ResourceState(r.state) in LIVE_STATES]
        units = list(cloud.units.values())
        assert len(units) == JOBS, "a unit was doubled (or never made)"
        assert len(live_rows) == JOBS and len(rows) == JOBS, "a row was doubled or lost"
        assert all(r.state != ResourceState.REQUESTED for r in rows)
        assert {r.provider_id for r in live_rows} == {u.provider_id for u in units}, "leaked unit"
        assert {u.tags[TAG_RESOURCE] for u in units} == {r.id for r in live_rows}
        assert {u.token for u in units} == {r.idempotency_token for r in live_rows}
        assert store.get(victim.id).provider_id is not None  # type: ignore[union-attr]
    finally:
        db.dispose()

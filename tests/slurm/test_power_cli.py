"""`provisioner slurm resume|suspend` as slurmctld runs them: separate processes sharing one broker state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends.simulated import SimulatedCloud
from backends.slurm.burst import TAG_SLURM_NODE
from provisioner.broker import EXAMPLE_POLICY, build_broker
from provisioner.clock import SystemClock
from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.settings import Settings
from provisioner.slurm_power import simulated_state_dir
from tests.slurm.conftest import SLURM_CONF

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]


def program(verb: str, nodelist: str, state_dir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    policy = state_dir / "policy.toml"  # the example's, also naming "cloud": the partition charged
    if not policy.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        policy.write_text(EXAMPLE_POLICY.read_text().replace("\n[end]", "\n[experiments.cloud]\n\n[end]"))
    env |= {
        "PROVISIONER_STATE_DIR": str(state_dir),
        "PROVISIONER_POLICY_FILE": str(policy),
        "PROVISIONER_LOG_LEVEL": "INFO",
        "SLURM_CONF": str(SLURM_CONF),
        "PYTHONPATH": str(REPO),
    }  # no PROVISIONER_SLURM_FAKE_CLOUD: no slurmd is started, Slurm's own state is only read
    return subprocess.Popen(
        [sys.executable, "-c", "from provisioner.cli import main; main()", "slurm", verb, nodelist],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
        outs.append(out)
    return outs


def test_resume_programs_racing_for_one_node_make_one_resource_and_suspend_twice_is_fine(
    slurm_cluster: Path, tmp_path: Path
) -> None:
    state = tmp_path / "broker"
    outs = finish([program("resume", "cloud4", state) for _ in range(2)])
    placements = sorted(p for out in outs for p in ("created", "already_live") if f"placement={p}" in out)
    assert placements == ["already_live", "created"], outs
    settings = Settings(state_dir=state)
    broker = build_broker(settings, simulated_state_dir=simulated_state_dir(settings))
    rows = broker.store.resources()
    assert len(rows) == 1 and rows[0].group_id == "slurm-node:cloud4" and rows[0].experiment == "cloud"
    units = [
        u
        for f in (state / "simulated").glob("*.json")
        for u in SimulatedCloud(f.stem, [], SystemClock(), state_file=f).live_units()
    ]
    assert len(units) == 1 and units[0].tags[TAG_SLURM_NODE] == "cloud4"

    outs = finish([program("suspend", "cloud4", state)]) + finish([program("suspend", "cloud4", state)])
    assert "slurm.suspend.released" in outs[0] and "slurm.suspend.released" not in outs[1]
    row = broker.store.get(rows[0].id)
    assert row is not None and row.state == ResourceState.RELEASED
    assert not broker.store.resources(states=LIVE_STATES)
    for out in outs:
        assert "Traceback" not in out

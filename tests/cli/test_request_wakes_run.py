"""`request create` in one process wakes `provisioner run` in another at once, without MQTT (wake socket)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from provisioner.broker import build_broker
from provisioner.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def env(state: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    return out | {
        "PROVISIONER_STATE_DIR": str(state),
        "PYTHONPATH": str(REPO),
        "PROVISIONER_BROKER_ID": "wake-test",
    }


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from provisioner.cli import main; main()", *args]


def test_a_request_created_by_the_cli_is_provisioned_by_a_running_broker_long_before_its_timer(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    run = subprocess.Popen(
        cli("run", "--interval", "3600"), env=env(state), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (state / "wake.sock").exists():
            assert run.poll() is None, run.stderr.read() if run.stderr else ""
            assert time.monotonic() < deadline, "provisioner run did not start listening"
            time.sleep(0.1)
        created = subprocess.run(
            cli("request", "create", "--experiment", "atlas", "--cores", "64", "--duration", "12h"),
            env=env(state), cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        request_id = created.stdout.split()[0]
        broker = build_broker(Settings(state_dir=state, broker_id="wake-test"))
        deadline = time.monotonic() + 60  # the timer is an hour: only the wake-up can do it
        while not [r for r in broker.store.resources() if r.request_id == request_id]:
            assert time.monotonic() < deadline, "the running broker did not plan the new request"
            time.sleep(0.2)
    finally:
        run.terminate()
        run.wait(timeout=30)

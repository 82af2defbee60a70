"""`provisioner serve --engine` as an operator runs it: a real process, the token from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

# The serve command on a root of its own, so the test does not depend on the CLI's module list.
ENTRY = """
import typer
from provisioner.cli import serve

app = typer.Typer()

@app.callback()
def root() -> None:
    pass

serve.register(app)
app()
"""


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    script = tmp_path / "serve_entry.py"
    script.write_text(ENTRY)
    env = {
        **os.environ,
        "PROVISIONER_STATE_DIR": str(tmp_path / "state"),
        "PROVISIONER_API_TOKEN": "op-token-123",
        "PROVISIONER_BROKER_ID": "serve-test",
    }
    for name in ("PROVISIONER_DATABASE_URL", "PROVISIONER_MQTT_URL", "PROVISIONER_POLICY_FILE"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, str(script), "serve", "--port", str(port), "--engine", "--interval", "1"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"provisioner serve exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll(up, 90, "provisioner serve to answer /healthz")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_served_engine_provisions_an_admitted_request_and_metrics_count_it(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, proc = served
    assert httpx.get(f"{url}/v1/requests").status_code == 401
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer op-token-123"}, timeout=30) as c:
        created = c.post("/v1/requests", json={"experiment": "atlas", "cores": 64, "duration_hours": 3})
        assert created.status_code == 201 and created.json()["status"] == "admitted"
        request_id = created.json()["id"]

        # The engine loop in the same process plans it on its next timer tick and starts units.
        poll(lambda: bool(c.get(f"/v1/requests/{request_id}").json()["resources"]), 30, "resources")
        metrics = httpx.get(f"{url}/metrics").text
        assert 'from_state="none",to_state="requested"' in metrics
        assert "provisioner_plans_total{" in metrics

    proc.terminate()
    output, _ = proc.communicate(timeout=30)
    assert "op-token-123" not in output, "the token must never reach the logs"
    assert "Application shutdown complete" in output


def test_serve_refuses_to_listen_beyond_loopback_without_authentication(tmp_path: Path) -> None:
    script = tmp_path / "serve_entry.py"
    script.write_text(ENTRY)
    env = {**os.environ, "PROVISIONER_STATE_DIR": str(tmp_path / "state")}
    for name in ("PROVISIONER_API_TOKEN", "PROVISIONER_API_AUTH_FILE", "PROVISIONER_DATABASE_URL"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(script), "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0: no authentication is configured" in done.stderr

"""POST /v1/heartbeats: a worker reports busy/idle for its unit; the reconciler reads it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from provisioner.api import create_app
from provisioner.api.context import ApiSettings
from provisioner.cli import app as cli
from provisioner.domain import LIVE_STATES
from tests.api.conftest import broker_factory, serve


def test_worker_heartbeat_over_http_marks_its_unit_busy_and_unknown_units_are_404(tmp_path: Path) -> None:
    app = create_app(broker_factory(tmp_path), settings=ApiSettings(token=None))
    for server in serve(app):
        with server.client() as http:
            body = {"experiment": "atlas", "cores": 64, "duration_hours": 2}
            assert http.post("/v1/requests", json=body).status_code in (200, 201)
            server.call(server.context.broker.engine.run_cycle())
            store = server.context.broker.store
            row = store.resources(states=LIVE_STATES)[0]
            got = http.post("/v1/heartbeats", json={"resource_id": row.id, "busy": True, "running_jobs": 4})
            assert got.status_code == 202, got.text
            assert got.json()["resource_id"] == row.id and got.json()["busy"] is True
            fresh = store.get(row.id)
            assert fresh is not None and fresh.busy and fresh.heartbeat_at is not None
            assert (
                http.post("/v1/heartbeats", json={"resource_id": "r-nope", "busy": True}).status_code == 404
            )
            idle = CliRunner().invoke(
                cli,
                ["heartbeat", "--idle", "--resource-id", row.id, "--api", server.url],
                catch_exceptions=False,
            )
            assert idle.exit_code == 0, idle.output
            assert store.get(row.id).busy is False  # type: ignore[union-attr]
            gone = CliRunner().invoke(
                cli, ["heartbeat", "--busy", "--resource-id", "r-gone", "--api", server.url]
            )
            assert gone.exit_code == 1
            both = http.post(
                "/v1/heartbeats", json={"resource_id": row.id, "instance_id": "i-1", "busy": True}
            )
            assert both.status_code == 422


def test_heartbeat_needs_a_token(tmp_path: Path) -> None:
    app = create_app(broker_factory(tmp_path), settings=ApiSettings(token="s3cret-api-token"))
    for server in serve(app):
        with server.client() as http:
            anonymous = http.post("/v1/heartbeats", json={"resource_id": "r-x", "busy": True})
            assert anonymous.status_code == 401


def test_busy_heartbeat_on_a_pilot_touches_its_work_file_even_when_the_broker_is_unreachable(
    tmp_path: Path,
) -> None:
    """The pilot wrapper ends a pilot whose payload has shown no work for its idle time: a payload that
    says it is busy must reset that clock whether or not the broker hears it."""
    work = tmp_path / "work-42"
    args = ["--resource-id", "r-1", "--api", "http://127.0.0.1:9", "--timeout-s", "2"]
    idle = CliRunner().invoke(cli, ["heartbeat", "--idle", *args], env={"PILOT_WORK_FILE": str(work)})
    assert idle.exit_code == 1 and not work.exists()  # idle is no work
    busy = CliRunner().invoke(cli, ["heartbeat", "--busy", *args], env={"PILOT_WORK_FILE": str(work)})
    assert busy.exit_code == 1 and "not delivered" in busy.output
    assert work.exists()

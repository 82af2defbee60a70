"""`provisioner run` as a site runs it ends a burst request by its rule and launches nothing more for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from provisioner.db import open_database
from provisioner.model import BurstRequestRow, EventRow, ResourceRow, row_time
from tests.cli_process import isolated_env, run_cli

REPO = Path(__file__).resolve().parents[2]


def cli(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(args, isolated_env(state, columns=200), timeout=timeout)


def _ended_and_released(db: Engine, request_id: str) -> bool:
    with Session(db) as s:
        row = s.get(BurstRequestRow, request_id)
        units = list(s.exec(select(ResourceRow).where(col(ResourceRow.request_id) == request_id)))
    final = {"released", "failed", "lost"}
    return row is not None and row.status == "done" and bool(units) and all(u.state in final for u in units)


def test_run_ends_a_request_at_its_deadline_or_duration_and_launches_nothing_more_for_it(
    tmp_path: Path,
) -> None:
    # `run` reads the wall clock (as a site runs it), so the deadline is real time ahead; the test waits
    # for what the broker does (request ended, its units released), never for a guessed number of cycles,
    # so a loaded machine makes it slower, not red.
    state = tmp_path / "state"
    deadline = (datetime.now(UTC) + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%S")
    created = cli(state, "request", "create", "--experiment", "atlas", "--cores", "8", "--duration", "1m",
                  "--deadline", deadline)  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    request_id = created.stdout.split()[0]

    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    log = (tmp_path / "run.log").open("w")
    broker = subprocess.Popen(
        [sys.executable, "-c", "from provisioner.cli import main; main()", "run", "--interval", "1"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    db = open_database(f"sqlite:///{state / 'provisioner.db'}")
    try:
        give_up = time.monotonic() + 400
        while not _ended_and_released(db, request_id):
            assert broker.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < give_up, "the request did not end and release its units in 400 s"
            time.sleep(1)
    finally:
        broker.kill()
        broker.wait(timeout=60)
        log.close()

    with Session(db) as s:
        row = s.get(BurstRequestRow, request_id)
        assert row is not None
        finished = s.exec(
            select(EventRow).where(EventRow.kind == "request.finished", EventRow.subject == request_id)
        ).one()
        units = list(s.exec(select(ResourceRow).where(col(ResourceRow.request_id) == request_id)))
    db.dispose()
    assert row.status == "done" and row.ended_by in {"deadline", "duration"}, (row.status, row.reason)
    assert row.reason.startswith("ended: deadline" if row.ended_by == "deadline" else "done: its"), row.reason
    assert finished.payload["ended_by"] == row.ended_by
    assert units, "the request got capacity before it ended"
    ended_at = row_time(finished.at)
    assert ended_at is not None
    # nothing launched for it after it ended, and what it had was released
    assert all((row_time(u.created_at) or ended_at) <= ended_at for u in units), [u.created_at for u in units]
    assert {u.state for u in units} <= {"released", "failed", "lost"}, [(u.id, u.state) for u in units]

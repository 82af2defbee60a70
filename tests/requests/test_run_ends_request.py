"""`provisioner run` as a site runs it ends a burst request by its rule and launches nothing more for it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session, col, select

from provisioner.db import open_database
from provisioner.model import BurstRequestRow, EventRow, ResourceRow, row_time

REPO = Path(__file__).resolve().parents[2]


def cli(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_STATE_DIR": str(state), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", "from provisioner.cli import main; main()", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_run_ends_a_request_at_its_deadline_or_duration_and_launches_nothing_more_for_it(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    deadline = (datetime.now(UTC) + timedelta(seconds=70)).strftime("%Y-%m-%dT%H:%M:%S")
    created = cli(state, "request", "create", "--experiment", "atlas", "--cores", "8", "--duration", "1m",
                  "--deadline", deadline)  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    request_id = created.stdout.split()[0]

    ran = cli(state, "run", "--interval", "1", "--cycles", "45")  # past the deadline
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]

    db = open_database(f"sqlite:///{state / 'provisioner.db'}")
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

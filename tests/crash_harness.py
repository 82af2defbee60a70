"""Shared parts of the SIGKILL crash tests for cloud backends: the broker worker process and the 1:1 check.

The worker runs real engine cycles (`DecisionEngine` → `Actuator` → a real backend) against a fake
cloud API that lives in the pytest process, so the fake keeps its state when the worker is killed.
`PROVISIONER_CRASH_AT` (see `provisioner.actuator.crash_point`) makes the worker SIGKILL itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from backends.base import TAG_BROKER, TAG_RESOURCE, Backend, BackendResource
from provisioner.actuator import CRASH_ENV, ActuatorSettings
from provisioner.circuit import CircuitSettings
from provisioner.clock import SystemClock
from provisioner.db import open_database
from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.engine import DecisionEngine, EngineSettings
from provisioner.model import ResourceRow
from provisioner.store import Store
from tests.engine.toy import StaticSource, greedy_plan, group_jobs, jobs

ROOT = Path(__file__).resolve().parents[1]
CRASH_POINTS = ("after_intent", "after_call", "after_record")


def fast_engine(store: Store, backends: Mapping[str, Backend], n_jobs: int, cores: int) -> DecisionEngine:
    """An engine over `backends` with `n_jobs` pending jobs of `cores` cores and millisecond backoffs."""
    settings = EngineSettings(
        interval_seconds=3600,
        actuator=ActuatorSettings(call_attempts=4, backoff_initial_seconds=0.01, backoff_max_seconds=0.05),
        circuit=CircuitSettings(),
    )
    return DecisionEngine(
        store=store,
        backends=backends,
        sources=[StaticSource(jobs=jobs("atlas", n_jobs, cores=cores))],
        group=group_jobs,
        planner=greedy_plan,
        settings=settings,
    )


async def run_cycles(
    db_url: str, broker_id: str, backend: Backend, n_jobs: int, cores: int, cycles: int
) -> dict[str, list[str]]:
    db = open_database(db_url)
    store = Store(db, SystemClock(), broker_id)
    engine = fast_engine(store, {backend.name: backend}, n_jobs, cores)
    created: list[str] = []
    resumed: list[str] = []
    resolved: list[str] = []
    released: list[str] = []
    orphans_released: list[str] = []
    try:
        for _ in range(cycles):
            report = await engine.run_cycle()
            created += report.act.created
            resumed += report.act.resumed
            resolved += report.reconcile.resolved_intents
            released += report.reconcile.released
            orphans_released += report.reconcile.orphans_released
    finally:
        await backend.close()
        db.dispose()
    return {
        "created": created,
        "resumed": resumed,
        "resolved": resolved,
        "released": released,
        "orphans_released": orphans_released,
    }


def worker_main(broker_id: str, make_backend: Callable[[str], Backend], cores: int) -> None:
    """Entry point of a backend's crash worker: `--db URL --endpoint URL --jobs N --cycles N`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=1)
    args = parser.parse_args()
    backend = make_backend(args.endpoint)
    result = asyncio.run(run_cycles(args.db, broker_id, backend, args.jobs, cores, args.cycles))
    print(json.dumps(result))


def start_worker(
    module: str, db_url: str, endpoint: str, *, crash_at: str | None, jobs: int, cycles: int
) -> subprocess.CompletedProcess[str]:
    """Run `python -m module` to completion (or to its SIGKILL) with or without a crash point."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if crash_at:
        env[CRASH_ENV] = crash_at
    cmd = [sys.executable, "-m", module, "--db", db_url, "--endpoint", endpoint]
    cmd += ["--jobs", str(jobs), "--cycles", str(cycles)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def assert_one_to_one(
    rows: Sequence[ResourceRow],
    listed: Sequence[BackendResource],
    fake_units: Mapping[str, str],
    *,
    broker_id: str,
    expected: int,
) -> None:
    """The table, the backend's listing and the fake's own state agree unit for unit.

    `fake_units` maps the provider id of every VM the fake holds with our broker tag to its
    resource tag, read from the fake directly (not through the backend under test).
    """
    live = [r for r in rows if ResourceState(r.state) in LIVE_STATES]
    assert all(ResourceState(r.state) != ResourceState.REQUESTED for r in rows), "an intent was left open"
    assert len(rows) == expected, f"{len(rows)} rows for {expected} units: a row was doubled or lost"
    assert len(live) == expected, [(r.id, r.state, r.failure_reason) for r in rows]
    assert len(fake_units) == expected, f"{len(fake_units)} VMs in the fake for {expected} rows"
    by_pid = {r.provider_id: r for r in live}
    assert set(by_pid) == set(fake_units), "a VM is not tracked (leaked) or a row points at nothing"
    for pid, resource_tag in fake_units.items():
        assert by_pid[pid].id == resource_tag, f"{pid} carries {resource_tag}, tracked as {by_pid[pid].id}"
    assert {u.provider_id for u in listed} == set(fake_units), "the backend's listing disagrees with the fake"
    for unit in listed:
        assert unit.tags[TAG_BROKER] == broker_id
        assert unit.tags[TAG_RESOURCE] == by_pid[unit.provider_id].id


def kill_and_restart(
    worker: str,
    db_url: str,
    endpoint: str,
    crash_at: str,
    *,
    broker_id: str,
    jobs: int,
    fake_units: Callable[[], Mapping[str, str]],
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """The crash scenario every cloud backend must survive: the worker dies at `crash_at`, is restarted,
    and picks up its own intent again — nothing released, no orphan had to be cleaned up.

    Returns both runs so the caller can check its backend's own side (counts, logs)."""
    killed = start_worker(worker, db_url, endpoint, crash_at=crash_at, jobs=jobs, cycles=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    db = open_database(db_url, migrate=False)
    try:
        [victim] = Store(db, SystemClock(), broker_id).resources()
    finally:
        db.dispose()
    expected_state = ResourceState.RUNNING if crash_at == "after_record" else ResourceState.REQUESTED
    assert victim.state == expected_state
    assert len(fake_units()) == (0 if crash_at == "after_intent" else 1)

    restarted = start_worker(worker, db_url, endpoint, crash_at=None, jobs=jobs, cycles=2)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    result = last_json(restarted)
    if crash_at != "after_record":
        assert result["resumed"] == [victim.id]  # the same intent retried with its token, not replaced
    assert result["released"] == [] and result["orphans_released"] == []  # nothing made twice and undone
    return killed, restarted

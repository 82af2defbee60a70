"""Kill the broker (SIGKILL) at each step of an EC2 launch, restart it: one instance, tracked, never two.

moto ignores EC2's ClientToken, so what keeps a retried intent from launching a second instance
here is the backend's look-up of the token tag — the path a real EC2 also takes once its own
token memory has expired.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backends.aws import AwsBackend
from backends.base import TAG_RESOURCE, ProviderState
from provisioner.clock import SystemClock
from provisioner.db import make_engine
from provisioner.domain import ResourceState
from provisioner.store import Store
from tests.aws.conftest import BROKER, CATALOG
from tests.aws.crash_worker import config

pytestmark = pytest.mark.moto

ROOT = Path(__file__).resolve().parents[2]


def worker(
    db_url: str, endpoint: str, credentials: Path, *, crash_at: str | None, first: bool
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROVISIONER_CRASH_AT"}
    env["PYTHONPATH"] = str(ROOT)
    if crash_at:
        env["PROVISIONER_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "tests.aws.crash_worker", "--db", db_url, "--endpoint", endpoint]
    cmd += ["--credentials", str(credentials)] + (["--first"] if first else [])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash_at", ["after_intent", "after_call", "after_record"])
async def test_restart_after_a_kill_leaves_exactly_one_tracked_instance(
    crash_at: str, moto: str, credentials_file: Path, sqlite_url: str
) -> None:
    killed = worker(sqlite_url, moto, credentials_file, crash_at=crash_at, first=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    backend = AwsBackend(config(moto, credentials_file), CATALOG)
    db = make_engine(sqlite_url)
    store = Store(db, SystemClock(), BROKER)
    try:
        [victim] = store.resources()
        assert len(await backend.list_resources()) == (0 if crash_at == "after_intent" else 1)

        restarted = worker(sqlite_url, moto, credentials_file, crash_at=None, first=False)
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        result = json.loads(restarted.stdout.strip().splitlines()[-1])
        if crash_at != "after_record":
            assert result["resumed"] == [victim.id]  # same intent, same token

        instances = await backend.list_resources()
        assert len(instances) == 1, "an instance was doubled (or never made)"
        [unit] = instances
        assert unit.state in (ProviderState.PENDING, ProviderState.RUNNING)
        assert unit.tags[TAG_RESOURCE] == victim.id
        row = store.get(victim.id)
        assert row is not None
        assert row.provider_id == unit.provider_id
        assert ResourceState(row.state) in (ResourceState.PROVISIONING, ResourceState.RUNNING)
    finally:
        await backend.close()
        db.dispose()

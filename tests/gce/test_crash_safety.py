"""Kill the broker (SIGKILL) at each step of a GCE insert, restart it: every VM tracked, none made twice.

The fake GCE API runs in this (pytest) process; the broker is a subprocess running real engine
cycles with the real `GceBackend` (google-cloud-compute over REST), so the fake outlives the kill.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from backends.base import TAG_BROKER, TAG_RESOURCE
from backends.gce import TAGS_METADATA_KEY, label_value
from provisioner.clock import SystemClock
from provisioner.db import make_engine
from provisioner.store import Store
from tests.crash_harness import (
    CRASH_POINTS,
    assert_one_to_one,
    kill_and_restart,
    last_json,
    run_cycles,
    start_worker,
)
from tests.fakes.gce_server import FakeGce, error_body
from tests.fakes.json_http_server import Reply, Request
from tests.gce.conftest import BROKER
from tests.gce.crash_worker import CORES, make_backend

WORKER = "tests.gce.crash_worker"
JOBS = 3


@dataclass
class CountingFakeGce(FakeGce):
    """The fake GCE, also recording every instance an insert really created, and able to lose replies."""

    created: list[str] = field(default_factory=list)
    lost_replies: int = 0

    def _insert(self, request: Request, m: re.Match[str]) -> Reply:
        before = set(self.instances)
        reply = super()._insert(request, m)
        made = sorted(name for _zone, name in set(self.instances) - before)
        self.created += made
        if made and self.lost_replies > 0:
            # GCE made the VM (and remembers the requestId) but the client never sees the reply.
            self.lost_replies -= 1
            return 503, error_body(503, "The service is currently unavailable.", "backendError")
        return reply


@pytest.fixture
def fake() -> Iterator[CountingFakeGce]:
    fake = CountingFakeGce()
    fake.start()
    yield fake
    fake.stop()


def ours(fake: FakeGce) -> dict[str, str]:
    """provider id → resource tag of every VM in the fake labelled with our broker, read from its state."""
    with fake.server.lock:
        found = {}
        for (zone, name), body in fake.instances.items():
            if (body.get("labels") or {}).get(TAG_BROKER) != label_value(BROKER):
                continue
            items = {i["key"]: i["value"] for i in (body.get("metadata") or {}).get("items", [])}
            found[f"{zone}/{name}"] = json.loads(items[TAGS_METADATA_KEY])[TAG_RESOURCE]
        return found


async def check(fake: CountingFakeGce, db_url: str, expected: int) -> None:
    db = make_engine(db_url)
    backend = make_backend(fake.url)
    try:
        rows = Store(db, SystemClock(), BROKER).resources()
        listed = await backend.list_resources()
        assert_one_to_one(rows, listed, ours(fake), broker_id=BROKER, expected=expected)
        assert len(fake.created) == expected, f"inserts created {fake.created}"
    finally:
        await backend.close()
        db.dispose()


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
async def test_gce_restart_after_a_kill_at_each_step_leaks_and_doubles_no_vm(
    crash_at: str, fake: CountingFakeGce, sqlite_url: str
) -> None:
    kill_and_restart(
        WORKER, sqlite_url, fake.url, crash_at, broker_id=BROKER, jobs=JOBS, fake_units=lambda: ours(fake)
    )
    await check(fake, sqlite_url, JOBS)


async def test_gce_restart_after_a_kill_adopts_the_vm_once_gce_forgot_the_request_id(
    fake: CountingFakeGce, sqlite_url: str
) -> None:
    killed = start_worker(WORKER, sqlite_url, fake.url, crash_at="after_call", jobs=1, cycles=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with fake.server.lock:
        fake.request_ids.clear()  # GCE keeps requestIds for a limited time only

    restarted = start_worker(WORKER, sqlite_url, fake.url, crash_at=None, jobs=1, cycles=2)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert len(last_json(restarted)["resumed"]) == 1
    assert fake.server.calls["insert"] == 2  # the retried insert hit alreadyExists and adopted
    await check(fake, sqlite_url, 1)


async def test_gce_rate_limited_insert_is_retried_by_the_engine_into_exactly_one_vm(
    fake: CountingFakeGce, sqlite_url: str
) -> None:
    fake.fail("insert", 429, "rateLimitExceeded", "Rate Limit Exceeded")
    # One attempt per backend call, so the engine's actuator is what retries.
    result = await run_cycles(sqlite_url, BROKER, make_backend(fake.url, max_attempts=1), 1, CORES, 1)
    assert len(result["created"]) == 1
    assert fake.server.calls["insert"] == 2
    await check(fake, sqlite_url, 1)


async def test_gce_insert_whose_reply_was_lost_is_retried_into_the_same_vm(
    fake: CountingFakeGce, sqlite_url: str
) -> None:
    fake.lost_replies = 1
    result = await run_cycles(sqlite_url, BROKER, make_backend(fake.url, max_attempts=1), JOBS, CORES, 2)
    assert len(result["created"]) == JOBS
    assert fake.server.calls["insert"] == JOBS + 1
    await check(fake, sqlite_url, JOBS)

"""Kill the broker (SIGKILL) at each step of a Nova server create, restart it: every server tracked, none twice.

Nova has no client token: what keeps a retried intent from a second server is the backend's
look-up of the deterministic name and token metadata. The fake Keystone/Nova runs in this (pytest)
process; the broker is a subprocess running real engine cycles with the real `OpenStackBackend`
(libcloud), so the fake outlives the kill.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from backends.base import TAG_BROKER, TAG_RESOURCE
from provisioner.clock import SystemClock
from provisioner.db import make_engine
from provisioner.store import Store
from tests.crash_harness import (
    CRASH_POINTS,
    assert_one_to_one,
    kill_and_restart,
    run_cycles,
)
from tests.fakes.json_http_server import Reply, Request
from tests.fakes.nova_server import FakeNova
from tests.openstack.conftest import BROKER
from tests.openstack.crash_worker import CORES, make_backend

WORKER = "tests.openstack.crash_worker"
JOBS = 3


@dataclass
class CountingFakeNova(FakeNova):
    """The fake Nova, also recording every server a create really made."""

    created: list[str] = field(default_factory=list)

    def _create(self, request: Request, m: re.Match[str]) -> Reply:
        before = set(self.servers)
        reply = super()._create(request, m)
        self.created += [sid for sid in self.servers if sid not in before]
        return reply


@pytest.fixture
def fake() -> Iterator[CountingFakeNova]:
    fake = CountingFakeNova()
    fake.start()
    yield fake
    fake.stop()


def ours(fake: FakeNova) -> dict[str, str]:
    """server id → resource tag of every server in the fake carrying our broker tag, read from its state."""
    with fake.server.lock:
        return {
            sid: body["metadata"][TAG_RESOURCE]
            for sid, body in fake.servers.items()
            if (body.get("metadata") or {}).get(TAG_BROKER) == BROKER
        }


async def check(fake: CountingFakeNova, db_url: str, expected: int) -> None:
    db = make_engine(db_url)
    backend = make_backend(fake.url)
    try:
        rows = Store(db, SystemClock(), BROKER).resources()
        listed = await backend.list_resources()
        assert_one_to_one(rows, listed, ours(fake), broker_id=BROKER, expected=expected)
        assert len(fake.created) == expected, f"creates made {fake.created}"
    finally:
        await backend.close()
        db.dispose()


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
async def test_openstack_restart_after_a_kill_at_each_step_leaks_and_doubles_no_server(
    crash_at: str, fake: CountingFakeNova, sqlite_url: str
) -> None:
    killed, restarted = kill_and_restart(
        WORKER, sqlite_url, fake.url, crash_at, broker_id=BROKER, jobs=JOBS, fake_units=lambda: ours(fake)
    )
    for out in (killed.stdout, killed.stderr, restarted.stdout, restarted.stderr):
        assert fake.password not in out  # the broker's logs never carry the credential
    await check(fake, sqlite_url, JOBS)


async def test_openstack_rate_limited_create_is_retried_by_the_engine_into_exactly_one_server(
    fake: CountingFakeNova, sqlite_url: str
) -> None:
    fake.fail("create", 429, "Rate limit exceeded for /servers", headers={"Retry-After": "0"})
    # One attempt per backend call, so the engine's actuator is what retries.
    result = await run_cycles(sqlite_url, BROKER, make_backend(fake.url, max_attempts=1), 1, CORES, 1)
    assert len(result["created"]) == 1
    assert fake.server.calls["create"] == 2
    await check(fake, sqlite_url, 1)


async def test_openstack_create_whose_reply_was_lost_is_found_not_repeated(
    fake: CountingFakeNova, sqlite_url: str
) -> None:
    fake.lose_create_replies(1)
    result = await run_cycles(sqlite_url, BROKER, make_backend(fake.url, max_attempts=1), JOBS, CORES, 2)
    assert len(result["created"]) == JOBS
    assert fake.server.calls["create"] == JOBS
    await check(fake, sqlite_url, JOBS)

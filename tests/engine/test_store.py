"""The lifecycle state machine as stored: legal transitions recorded with their event, illegal ones refused."""

from __future__ import annotations

import pytest
from sqlmodel import select

from provisioner.bus import InProcessBus
from provisioner.clock import SimulatedClock
from provisioner.db import open_database
from provisioner.domain import IllegalTransition, ResourceState
from provisioner.model import EventRow, ResourceRow
from provisioner.store import Store, idempotency_token
from tests.engine.toy import offering


async def test_lifecycle_walk_stores_each_transition_with_its_event(database_url: str) -> None:
    db = open_database(database_url)
    bus = InProcessBus()
    sub = await bus.subscribe("events/#")
    store = Store(db, SimulatedClock(), "b1", bus)
    try:
        o = offering("m1")
        row = await store.record_intent(o, group_id="g1", experiment="atlas")
        assert row.state == ResourceState.REQUESTED
        assert row.idempotency_token == idempotency_token("b1", row.id)
        path = [
            ResourceState.PROVISIONING,
            ResourceState.RUNNING,
            ResourceState.DRAINING,
            ResourceState.RELEASED,
        ]
        for target in path:
            await store.transition(
                row.id, target, provider_id="i-1" if target == ResourceState.PROVISIONING else None
            )
        final = store.get(row.id)
        assert final is not None and final.state == ResourceState.RELEASED
        assert final.provider_id == "i-1" and final.released_at is not None and final.launched_at is not None
        events = store.events(kind="resource.state", subject=row.id)
        assert [e.payload["to"] for e in events] == ["requested", *[str(s) for s in path]]
        published = [(await sub.get(1)).payload for _ in range(5)]
        assert [p["payload"]["to"] for p in published] == ["requested", *[str(s) for s in path]]
        assert [p["id"] for p in published] == [e.id for e in events]  # stored first, with the same id
    finally:
        db.dispose()


async def test_illegal_transition_raises_and_changes_nothing(database_url: str) -> None:
    db = open_database(database_url)
    store = Store(db, SimulatedClock(), "b1")
    try:
        row = await store.record_intent(offering("m1"), group_id=None, experiment=None)
        await store.transition(row.id, ResourceState.PROVISIONING, provider_id="i-9")
        await store.transition(row.id, ResourceState.RUNNING)
        await store.transition(row.id, ResourceState.RELEASED)
        with pytest.raises(IllegalTransition):
            await store.transition(row.id, ResourceState.RUNNING)
        with pytest.raises(IllegalTransition):
            await store.transition(row.id, ResourceState.RELEASED)
        with store.session() as s:
            stored = s.exec(select(ResourceRow).where(ResourceRow.id == row.id)).one()
            assert stored.state == ResourceState.RELEASED
            n_events = len(s.exec(select(EventRow).where(EventRow.subject == row.id)).all())
        assert n_events == 4  # requested, provisioning, running, released: nothing for the refused ones
    finally:
        db.dispose()


async def test_requested_cannot_skip_to_draining(store: Store) -> None:
    row = await store.record_intent(offering("m1"), group_id=None, experiment=None)
    with pytest.raises(IllegalTransition):
        await store.transition(row.id, ResourceState.DRAINING)


async def test_tokens_are_unique_per_resource_and_stable_per_id(store: Store) -> None:
    a = await store.record_intent(offering("m1"), group_id=None, experiment=None)
    b = await store.record_intent(offering("m1"), group_id=None, experiment=None)
    assert a.idempotency_token != b.idempotency_token
    assert idempotency_token(store.broker_id, a.id) == a.idempotency_token


async def test_bus_outage_does_not_lose_the_stored_event(store: Store, clock: SimulatedClock) -> None:
    class BrokenBus(InProcessBus):
        async def publish(self, topic: str, payload: object) -> None:
            raise ConnectionError("broker down")

    store.bus = BrokenBus()
    row = await store.record_intent(offering("m1"), group_id=None, experiment=None)
    assert [e.subject for e in store.events(kind="resource.state")] == [row.id]


def test_saved_groups_hold_each_cycles_spec_and_when_they_were_last_seen(database_url: str) -> None:
    from dataclasses import replace

    from provisioner.model import DemandGroupRow
    from tests.engine.toy import group_jobs, jobs

    db = open_database(database_url)
    clock = SimulatedClock()
    store = Store(db, clock, "b1")
    try:
        [g] = group_jobs(jobs("atlas", 3))
        store.save_groups([g])
        first = clock.now()
        clock.advance(60)
        store.save_groups([g])  # unchanged: only seen again
        clock.advance(60)
        store.save_groups([replace(g, jobs=7)])  # the same group, grown
        clock.advance(60)
        store.save_groups([replace(g, jobs=7)])
        with store.session() as s:
            [row] = s.exec(select(DemandGroupRow)).all()
        assert row.jobs == 7 and row.spec["jobs"] == 7
        observed = row.observed_at if row.observed_at.tzinfo else row.observed_at.replace(tzinfo=first.tzinfo)
        assert (observed - first).total_seconds() == 180
        # another store (a new leader) writes what it sees, whatever the first one cached
        other = Store(db, clock, "b2")
        clock.advance(60)
        other.save_groups([replace(g, jobs=2)])
        clock.advance(60)
        store.save_groups([replace(g, jobs=7)])  # leads again, seeing what it saw before: written in full
        with store.session() as s:
            [row] = s.exec(select(DemandGroupRow)).all()
        assert row.jobs == 7 and row.spec["jobs"] == 7
    finally:
        db.dispose()

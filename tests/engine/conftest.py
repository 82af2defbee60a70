"""Fixtures for the engine tests: a simulated clock, a migrated database, a store on an in-process bus."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from provisioner.bus import InProcessBus
from provisioner.clock import SimulatedClock
from provisioner.db import open_database
from provisioner.store import Store

BROKER = "test-broker"


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Engine]:
    eng = open_database(sqlite_url)
    yield eng
    eng.dispose()


@pytest.fixture
def bus() -> InProcessBus:
    return InProcessBus()


@pytest.fixture
def store(db: Engine, clock: SimulatedClock, bus: InProcessBus) -> Store:
    return Store(db, clock, BROKER, bus)

"""Shared fixtures: databases (SQLite file, real PostgreSQL), and the service guard."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import Engine

from provisioner.db import open_database
from tests.services import port_open, service_missing

# Hypothesis: deterministic in CI (a red CI means a change broke something), exploring on developer
# machines (new examples every run, kept in .hypothesis/ so a found bug is replayed until it is fixed).
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else "dev")
)

PG_HOST = os.environ.get("PROVISIONER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PROVISIONER_TEST_PG_PORT", "5432"))
PG_ADMIN_URL = os.environ.get(
    "PROVISIONER_TEST_PG_URL", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if not port_open(PG_HOST, PG_PORT):
        service_missing("PostgreSQL", f"nothing listens on {PG_HOST}:{PG_PORT}; run scripts/services.sh up")
    import psycopg

    name = f"broker_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run the test against both SQLite and the real PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    eng = open_database(sqlite_url)
    yield eng
    eng.dispose()

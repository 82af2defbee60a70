"""Fixtures for the accounting tests: usage records and a migrated database session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session

from provisioner.db import make_engine, upgrade
from provisioner.domain import UsageRecord

OCT = datetime(2026, 10, 1, tzinfo=UTC)


def job(n: int, **over: Any) -> UsageRecord:
    """A finished 8-core job of 2 h on a 12.5 HS23/core node, ending on 10 October 2026."""
    end = OCT + timedelta(days=9, hours=12, minutes=n % 60)
    base = UsageRecord(
        record_key=f"UKI-TEST:job:{n}",
        kind="job",
        experiment="atlas",
        site="UKI-TEST",
        submit_host="ce01.example.org",
        backend="aws",
        start_time=end - timedelta(hours=2),
        end_time=end,
        wall_seconds=7200,
        cpu_seconds=7200 * 8 - 600,
        cores=8,
        nodes=1,
        memory_kb=16_000_000,
        hs23_per_core=12.5,
        resource_id=f"r-{n % 7}",
        local_job_id=f"{1000 + n}",
        fqan="/atlas/Role=production/Capability=NULL",
        global_user_name="/DC=ch/DC=cern/CN=atlas prod",
        offering_id="aws:us-east-1:m7i.2xlarge:spot",
        offering_family="aws:m7i",
        market="spot",
        infrastructure="APEL-ce01-slurm",
    )
    return replace(base, **over)


def vm(n: int, **over: Any) -> UsageRecord:
    start = OCT + timedelta(days=3, hours=n)
    base = UsageRecord(
        record_key=f"UKI-TEST:vm:i-{n:04d}",
        kind="vm",
        experiment="cms",
        site="UKI-TEST",
        submit_host="broker",
        backend="aws",
        start_time=start,
        end_time=start + timedelta(hours=10),
        wall_seconds=36000,
        cpu_seconds=36000 * 4,
        cores=4,
        memory_kb=16 * 1024 * 1024,
        hs23_per_core=17.5,
        resource_id=f"i-{n:04d}",
        offering_id="aws:us-east-1:g5.xlarge:on_demand",
        market="on_demand",
        cloud_image_id="ami-123",
        cloud_type="aws-ec2",
    )
    return replace(base, **over)


@pytest.fixture
def session(sqlite_url: str) -> Iterator[Session]:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()


@pytest.fixture
def any_session(database_url: str) -> Iterator[Session]:
    """The same test on SQLite and on the real PostgreSQL."""
    upgrade(database_url)
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()

"""Fixtures: a fake GCE REST server per test and a backend pointed at it through google-cloud-compute."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest

from backends.base import ProvisionRequest
from backends.gce import GceBackend
from backends.gce_config import GceConfig
from provisioner.domain import Arch, Market, Offering
from tests.fakes.gce_server import FakeGce

ZONE = "us-central1-a"
BROKER = "broker-Test.1"


@pytest.fixture
def fake_gce() -> Iterator[FakeGce]:
    fake = FakeGce().start()
    yield fake
    fake.stop()


def gce_config(fake: FakeGce, **overrides: object) -> GceConfig:
    values: dict[str, object] = {
        "project": "p",
        "zones": [ZONE, "europe-west4-b"],
        "api_endpoint": fake.url,
        "monitoring_endpoint": fake.url,
        "anonymous": True,
        "poll_interval_seconds": 0.01,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "max_attempts": 3,
        "request_timeout_seconds": 5.0,
        "operation_timeout_seconds": 10.0,
    }
    values.update(overrides)
    return GceConfig.model_validate(values)


@pytest.fixture
async def gce(fake_gce: FakeGce) -> AsyncIterator[GceBackend]:
    backend = GceBackend(gce_config(fake_gce), BROKER)
    yield backend
    await backend.close()


def offering(
    instance_type: str = "n2-standard-4",
    market: Market = Market.ON_DEMAND,
    arch: Arch = Arch.X86_64,
    gpu_model: str | None = None,
    gpu_count: int = 0,
    zone: str = ZONE,
) -> Offering:
    return Offering(
        id=f"gce:{zone}:{instance_type}:{market}",
        backend="gce",
        provider="gce",
        region=zone.rsplit("-", 1)[0],
        zone=zone,
        instance_type=instance_type,
        family=f"gce:{instance_type.split('-')[0]}",
        market=market,
        cores=4,
        memory_gb=16,
        arch=arch,
        price_per_hour=Decimal("0.19"),
        hs23_per_core=12.0,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
    )


def request_for(off: Offering, resource_id: str = "res-1", token: str | None = None) -> ProvisionRequest:
    return ProvisionRequest(
        resource_id=resource_id,
        offering=off,
        idempotency_token=token or f"token-{resource_id}",
        broker_id=BROKER,
        group_id="grp-7",
        experiment="ATLAS",
    )

"""Fixtures: a fake Keystone + Nova + Glance per test and a libcloud-based backend pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest

from backends.base import ProvisionRequest
from backends.openstack import OpenStackBackend
from backends.openstack_config import OpenStackConfig
from provisioner.domain import Arch, Market, Offering
from tests.fakes.nova_server import FakeNova

BROKER = "broker-1"


@pytest.fixture
def fake_nova() -> Iterator[FakeNova]:
    fake = FakeNova().start()
    yield fake
    fake.stop()


def os_config(fake: FakeNova, **overrides: object) -> OpenStackConfig:
    values: dict[str, object] = {
        "name": "hepcloud",
        "auth_url": fake.url,
        "username": fake.username,
        "password": fake.password,
        "project_name": fake.project,
        "images": {"x86_64": "alma9", "arm64": "img-arm"},
        "flavors": {
            "m1.large": {"price_per_hour": "0.08", "hs23_per_core": 11.0},
            "a1.large": {"price_per_hour": "0.06", "hs23_per_core": 9.5, "arch": "arm64"},
            "g1.a100": {"price_per_hour": "1.10", "hs23_per_core": 12.0, "gpu_model": "A100", "gpu_count": 1},
            "m1.retired": {"price_per_hour": "0.01", "hs23_per_core": 8.0},
            "m1.unknown": {"price_per_hour": "0.01", "hs23_per_core": 8.0},
        },
        "network_ids": ["net-1"],
        "key_name": "broker-key",
        "poll_interval_seconds": 0.01,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "max_attempts": 3,
        "request_timeout_seconds": 5,
        "build_wait_seconds": 5.0,
    }
    values.update(overrides)
    return OpenStackConfig.model_validate(values)


@pytest.fixture
async def nova(fake_nova: FakeNova) -> AsyncIterator[OpenStackBackend]:
    backend = OpenStackBackend(os_config(fake_nova), BROKER)
    yield backend
    await backend.close()


def os_offering(flavor: str = "m1.large", arch: Arch = Arch.X86_64) -> Offering:
    return Offering(
        id=f"hepcloud:RegionOne:{flavor}:on_demand",
        backend="hepcloud",
        provider="openstack",
        region="RegionOne",
        instance_type=flavor,
        family="openstack:hepcloud",
        market=Market.ON_DEMAND,
        cores=4,
        memory_gb=8,
        arch=arch,
        price_per_hour=Decimal("0.08"),
        hs23_per_core=11.0,
    )


def os_request(off: Offering, resource_id: str = "res-1", token: str | None = None) -> ProvisionRequest:
    return ProvisionRequest(
        resource_id=resource_id,
        offering=off,
        idempotency_token=token or f"token-{resource_id}",
        broker_id=BROKER,
        group_id="grp-1",
        experiment="dune",
    )

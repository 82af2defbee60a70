"""Runs engine cycles with the OpenStack backend against a fake Keystone/Nova in a separate process, for the crash tests."""

from __future__ import annotations

from backends.openstack import OpenStackBackend
from backends.openstack_config import OpenStackConfig
from tests.crash_harness import worker_main
from tests.fakes.nova_server import FakeNova
from tests.openstack.conftest import BROKER

FLAVOR = "m1.large"  # 4 vCPUs in the fake
CORES = 4  # one job per server


def crash_config(endpoint: str, **overrides: object) -> OpenStackConfig:
    values: dict[str, object] = {
        "name": "hepcloud",
        "auth_url": endpoint,
        # The fake's default account (dataclass defaults): the worker has no FakeNova instance.
        "username": FakeNova.username,
        "password": FakeNova.password,
        "project_name": FakeNova.project,
        "images": {"x86_64": "alma9"},
        "flavors": {FLAVOR: {"price_per_hour": "0.08", "hs23_per_core": 11.0}},
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


def make_backend(endpoint: str, **overrides: object) -> OpenStackBackend:
    return OpenStackBackend(crash_config(endpoint, **overrides), BROKER)


if __name__ == "__main__":
    worker_main(BROKER, make_backend, CORES)

"""Runs engine cycles with the GCE backend against a fake GCE API in a separate process, for the crash tests."""

from __future__ import annotations

from backends.gce import GceBackend
from backends.gce_config import GceConfig
from tests.crash_harness import worker_main
from tests.gce.conftest import BROKER, ZONE, offering

OFFERING = offering()  # n2-standard-4, 4 cores, on demand, in ZONE
CORES = OFFERING.cores  # one job per VM


def crash_config(endpoint: str, **overrides: object) -> GceConfig:
    values: dict[str, object] = {
        "project": "p",
        "zones": [ZONE],
        "api_endpoint": endpoint,
        "monitoring_endpoint": endpoint,
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


def make_backend(endpoint: str, **overrides: object) -> GceBackend:
    return GceBackend(crash_config(endpoint, **overrides), BROKER, catalog=[OFFERING])


if __name__ == "__main__":
    worker_main(BROKER, make_backend, CORES)

"""Building a DecisionEngine over simulated backends for tests, with fast retry settings."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from backends.base import Backend
from provisioner.actuator import ActuatorSettings
from provisioner.circuit import CircuitSettings
from provisioner.engine import DecisionEngine, EngineSettings
from provisioner.reconciler import ReconcileSettings
from provisioner.store import Store
from tests.engine.toy import StaticSource, greedy_plan, group_jobs


def build_engine(
    store: Store,
    backends: Mapping[str, Backend],
    source: StaticSource,
    *,
    orphan_policy: str = "release",
    lost_grace: timedelta = timedelta(minutes=10),
    boot_timeout: timedelta = timedelta(minutes=20),
    idle_drain: timedelta = timedelta(minutes=15),
    max_replans: int = 2,
) -> DecisionEngine:
    assert orphan_policy in ("release", "adopt")
    settings = EngineSettings(
        interval_seconds=3600,
        batch_idle_seconds=0.2,
        batch_max_seconds=1.0,
        max_replans=max_replans,
        actuator=ActuatorSettings(call_attempts=4, backoff_initial_seconds=1.0, backoff_max_seconds=8.0),
        reconcile=ReconcileSettings(
            orphan_policy="adopt" if orphan_policy == "adopt" else "release",
            lost_grace=lost_grace,
            boot_timeout=boot_timeout,
            idle_drain=idle_drain,
        ),
        circuit=CircuitSettings(),
    )
    return DecisionEngine(
        store=store,
        backends=backends,
        sources=[source],
        group=group_jobs,
        planner=greedy_plan,
        settings=settings,
    )

"""PROVISIONER_PLANNER_WORKERS: the broker's planner splits its costing over that many processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from provisioner.broker import build_broker
from provisioner.clock import SimulatedClock
from provisioner.planner import costing_parts, workers
from provisioner.settings import Settings
from tests.planner.instances import random_instance


def test_the_brokers_planner_costs_in_as_many_processes_as_the_setting_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = build_broker(Settings(state_dir=tmp_path, planner_workers=3), clock=SimulatedClock()).engine
    monkeypatch.setattr(costing_parts, "PART_MIN_GROUPS", 8)  # parts of a small instance
    inst = random_instance(11, groups=64)
    asked: list[int] = []
    real_ask = workers._Worker.ask

    def ask(self: workers._Worker, request: bytes) -> Any:
        asked.append(self.process.pid)
        return real_ask(self, request)

    monkeypatch.setattr(workers._Worker, "ask", ask)
    got = engine.planner(inst.groups, inst.offerings, [], inst.constraints)  # no fleet: every group costed
    # parts of the groups costed in worker processes, which delivered (that the plan is the one a single
    # process makes is tests/planner/test_workers.py's)
    pool = engine.planner.keywords["workers"]  # type: ignore[attr-defined]
    assert pool.count == 3 and asked and pool.redone == 0
    pool.close()
    assert got.items


def test_fewer_than_one_planner_worker_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="planner_workers"):
        Settings(state_dir=tmp_path, planner_workers=0)

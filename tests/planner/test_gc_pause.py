"""The planner holds the cyclic garbage collector off while it plans (`gc_pause.py`) and leaves it as it was."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from provisioner.domain import PlanningConstraints
from provisioner.planner import plan
from tests.planner.factories import NOW, group, offering

PLANNER = sys.modules["provisioner.planner"]


@pytest.fixture
def collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_plan_runs_with_the_collector_off_and_leaves_it_as_it_was(
    enabled: bool, collector_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    solve = PLANNER.solve

    def watched(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return solve(*args, **kwargs)

    monkeypatch.setattr(PLANNER, "solve", watched)
    gc.enable() if enabled else gc.disable()
    found = plan([group("g", jobs=4)], [offering("a")], (), PlanningConstraints(now=NOW))
    assert sum(it.jobs for it in found.items) == 4
    assert seen == [False]
    assert gc.isenabled() is enabled


def test_a_plan_that_raises_turns_the_collector_back_on(
    collector_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("solver gone")

    monkeypatch.setattr(PLANNER, "solve", broken)
    gc.enable()
    with pytest.raises(RuntimeError, match="solver gone"):
        plan([group("g", jobs=4)], [offering("a")], (), PlanningConstraints(now=NOW))
    assert gc.isenabled()

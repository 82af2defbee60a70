"""The planner never drains a unit as idle when nothing reports on its work."""

from __future__ import annotations

from provisioner.domain import DrainReason, FleetUnit, PlanningConstraints, ResourceState
from provisioner.planner import plan
from tests.planner.factories import NOW, group, offering


def test_a_unit_without_busy_signal_is_never_drained_as_idle_even_at_zero_idle_drain() -> None:
    o = offering("m7i")
    fleet = [
        FleetUnit(
            "silent", o.id, "g", "atlas", ResourceState.RUNNING, busy=False, idle_hours=5.0, busy_known=False
        ),
        FleetUnit("idle", o.id, "g", "atlas", ResourceState.RUNNING, busy=False, idle_hours=5.0),
    ]
    p = plan([group(jobs=1)], [o], fleet, PlanningConstraints(now=NOW, idle_drain_hours=0.0))
    drains = {d.resource_id: d.reason for d in p.drains}
    assert drains.get("idle") is DrainReason.IDLE
    assert "silent" not in drains

"""Metrics from bus events: what each event kind counts, isolation between registries, feeding from a bus."""

from __future__ import annotations

import asyncio
from typing import Any

from provisioner.bus import BusMessage, InProcessBus
from provisioner.metrics import BrokerMetrics


def event(kind: str, subject: str, payload: dict[str, Any]) -> BusMessage:
    body = {"id": 1, "at": "2026-11-23T12:00:00+00:00", "kind": kind, "subject": subject, "payload": payload}
    return BusMessage(f"events/{kind}", body)


def value(metrics: BrokerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_resource_transitions_are_counted_by_backend_and_states() -> None:
    m = BrokerMetrics()
    for _ in range(2):
        m.observe(
            event("resource.state", "r-1", {"from": "requested", "to": "provisioning", "backend": "aws"})
        )
    m.observe(event("resource.state", "r-2", {"from": None, "to": "requested", "backend": "gce"}))
    total = "provisioner_resource_transitions_total"
    assert value(m, total, backend="aws", from_state="requested", to_state="provisioning") == 2
    assert value(m, total, backend="gce", from_state="none", to_state="requested") == 1
    assert value(m, "provisioner_events_total", kind="resource.state") == 3


def test_plans_count_and_their_cost_is_summed_exactly_enough_to_watch() -> None:
    m = BrokerMetrics()
    m.observe(event("plan.created", "p-1", {"solver": "milp", "items": 2, "total_cost": "10.10"}))
    m.observe(event("plan.created", "p-2", {"solver": "milp", "items": 1, "total_cost": "0.20"}))
    assert value(m, "provisioner_plans_total", solver="milp") == 2
    assert abs((value(m, "provisioner_plan_cost_usd_total") or 0) - 10.30) < 1e-9
    assert value(m, "provisioner_last_plan_cost_usd") == 0.20


def test_backend_trouble_is_counted_by_type_and_scope() -> None:
    m = BrokerMetrics()
    m.observe(event("backend.error", "aws", {"error_type": "Throttled", "offering_id": "aws:x"}))
    m.observe(event("backend.disabled", "gce", {"error": "gce: bad credentials", "until": "later"}))
    m.observe(event("circuit.opened", "offering:aws:us-east-1:p4d.24xlarge:spot", {"until": "later"}))
    m.observe(event("circuit.opened", "backend:gce", {"until": "later"}))
    assert value(m, "provisioner_backend_errors_total", backend="aws", type="Throttled") == 1
    assert value(m, "provisioner_backends_disabled_total", backend="gce") == 1
    assert value(m, "provisioner_circuits_opened_total", scope="offering") == 1
    assert value(m, "provisioner_circuits_opened_total", scope="backend") == 1


def test_cycle_durations_go_into_the_histogram() -> None:
    m = BrokerMetrics()
    m.observe(event("cycle.finished", "cycle", {"seconds": 0.3, "dry_run": False}))
    m.observe(event("cycle.finished", "cycle", {"seconds": 4.0, "dry_run": False}))
    name = "provisioner_cycle_duration_seconds"
    assert value(m, f"{name}_count", dry_run="false") == 2
    assert value(m, f"{name}_bucket", dry_run="false", le="0.5") == 1
    assert value(m, f"{name}_sum", dry_run="false") == 4.3


def test_unreadable_messages_are_counted_not_raised() -> None:
    m = BrokerMetrics()
    m.observe(BusMessage("events/resource.state", {"kind": "resource.state", "payload": "not a mapping"}))
    m.observe(event("cycle.finished", "cycle", {"seconds": "slow"}))
    m.observe(event("plan.created", "p-1", {"solver": "greedy", "total_cost": "NaN"}))
    assert value(m, "provisioner_metrics_unreadable_events_total") == 2
    assert value(m, "provisioner_plans_total", solver="greedy") == 1
    assert value(m, "provisioner_plan_cost_usd_total") == 0


def test_two_brokers_metrics_do_not_share_a_registry() -> None:
    a, b = BrokerMetrics(), BrokerMetrics()
    a.observe(event("plan.created", "p-1", {"solver": "greedy", "total_cost": "1"}))
    assert value(a, "provisioner_plans_total", solver="greedy") == 1
    assert value(b, "provisioner_plans_total", solver="greedy") is None


async def test_attached_metrics_follow_events_published_on_the_bus_until_detached() -> None:
    bus = InProcessBus()
    m = BrokerMetrics()
    await m.attach(bus)
    await bus.publish("demand", {"jobs": 3})  # not an event: ignored
    await bus.publish("events/plan.created", event("plan.created", "p-1", {"solver": "greedy"}).payload)
    for _ in range(100):
        if value(m, "provisioner_plans_total", solver="greedy"):
            break
        await asyncio.sleep(0.01)
    assert value(m, "provisioner_plans_total", solver="greedy") == 1
    assert value(m, "provisioner_events_total", kind="demand") is None
    await m.detach()
    await bus.publish("events/plan.created", event("plan.created", "p-2", {"solver": "greedy"}).payload)
    await asyncio.sleep(0.05)
    assert value(m, "provisioner_plans_total", solver="greedy") == 1

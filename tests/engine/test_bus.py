"""The event bus: topic filters, the in-process bus, a round trip through the real Mosquitto, demand wake-ups."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from backends.simulated import SimulatedCloud
from provisioner.bus import DEMAND_TOPIC, InProcessBus, open_bus, topic_matches
from provisioner.bus_mqtt import MqttBus
from provisioner.clock import SimulatedClock
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering
from tests.services import port_open, service_missing

MQTT_HOST = os.environ.get("PROVISIONER_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("PROVISIONER_TEST_MQTT_PORT", "1883"))


@pytest.mark.parametrize(
    ("filt", "topic", "match"),
    [
        ("events/#", "events/resource.state", True),
        ("events/#", "events", True),
        ("events/+", "events/a/b", False),
        ("events/+/b", "events/a/b", True),
        ("demand", "demand", True),
        ("demand", "demand/x", False),
        ("events/plan.created", "events/resource.state", False),
    ],
)
def test_topic_filters_follow_mqtt_rules(filt: str, topic: str, match: bool) -> None:
    assert topic_matches(filt, topic) is match


async def test_in_process_bus_delivers_only_matching_topics() -> None:
    bus = InProcessBus()
    events = await bus.subscribe("events/#")
    demand = await bus.subscribe(DEMAND_TOPIC)
    await bus.publish("events/resource.state", {"n": 1})
    await bus.publish(DEMAND_TOPIC, {"jobs": 3})
    assert (await events.get(1)).payload == {"n": 1}
    assert (await demand.get(1)).payload == {"jobs": 3}
    assert events.pending() == 0 and demand.pending() == 0
    await events.close()
    await bus.publish("events/x", {})
    assert events.pending() == 0


@pytest.mark.mqtt
async def test_mqtt_round_trip_through_the_real_broker() -> None:
    if not port_open(MQTT_HOST, MQTT_PORT):
        service_missing("Mosquitto", f"nothing listens on {MQTT_HOST}:{MQTT_PORT}; start mosquitto")
    broker_id = f"test-{uuid.uuid4().hex[:8]}"
    publisher = await open_bus(f"mqtt://{MQTT_HOST}:{MQTT_PORT}", broker_id)
    listener = MqttBus(MQTT_HOST, MQTT_PORT, broker_id=broker_id)
    await listener.connect()
    try:
        assert isinstance(publisher, MqttBus)
        sub = await listener.subscribe("events/#")
        other = await listener.subscribe(DEMAND_TOPIC)
        await asyncio.sleep(0.2)  # let the SUBSCRIBE reach the broker
        await publisher.publish("events/resource.state", {"subject": "r-1", "to": "running"})
        got = await sub.get(timeout=5)
        assert got.topic == "events/resource.state"
        assert got.payload == {"subject": "r-1", "to": "running"}
        assert other.pending() == 0
    finally:
        await publisher.close()
        await listener.close()


@pytest.mark.mqtt
async def test_store_events_reach_an_mqtt_subscriber(store: Store) -> None:
    if not port_open(MQTT_HOST, MQTT_PORT):
        service_missing("Mosquitto", f"nothing listens on {MQTT_HOST}:{MQTT_PORT}; start mosquitto")
    bus = MqttBus(MQTT_HOST, MQTT_PORT, broker_id=f"test-{uuid.uuid4().hex[:8]}")
    await bus.connect()
    try:
        sub = await bus.subscribe("events/resource.state")
        await asyncio.sleep(0.2)
        store.bus = bus
        row = await store.record_intent(offering("m1"), group_id="g", experiment="atlas")
        message = await sub.get(timeout=5)
        [stored] = store.events(subject=row.id)
        assert message.payload["id"] == stored.id and message.payload["payload"]["to"] == "requested"
    finally:
        await bus.close()


async def test_demand_on_the_bus_starts_a_cycle_at_once(store: Store, clock: SimulatedClock) -> None:
    bus = InProcessBus()
    store.bus = bus
    cloud = SimulatedCloud("cloud", [offering("m1")], clock, broker_id=BROKER)
    source = StaticSource()
    engine = build_engine(store, {"cloud": cloud}, source)  # timer: one hour
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run_forever(stop))
    try:
        for _ in range(100):
            if source.calls == 1:
                break
            await asyncio.sleep(0.01)
        assert source.calls == 1
        source.jobs.extend(jobs("atlas", 2))
        for _ in range(3):  # a burst: batched into one cycle
            await bus.publish(DEMAND_TOPIC, {"experiment": "atlas"})
            await asyncio.sleep(0.05)
        for _ in range(300):
            if len(cloud.live_units()) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(cloud.live_units()) == 2
        assert source.calls == 2  # one cycle for the burst, well before the one-hour timer
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_refusing_backend_does_not_make_the_loop_spin(store: Store, clock: SimulatedClock) -> None:
    from backends.simulated import Faults

    o = offering("m1")
    cloud = SimulatedCloud("cloud", [o], clock, broker_id=BROKER, faults=Faults(capacity={o.id}))
    source = StaticSource(jobs=jobs("atlas", 1))
    engine = build_engine(store, {"cloud": cloud}, source)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run_forever(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert source.calls == 1 and cloud.calls["provision"] == 1

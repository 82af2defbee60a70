"""New demand wakes a running engine long before its timer: external topics, new Slurm submissions,
the wake socket another process pokes; the batching window comes from the settings."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path

from backends.simulated import SimulatedCloud
from backends.slurm.client import JobState, SlurmJob
from provisioner.broker import build_broker
from provisioner.bus import InProcessBus
from provisioner.bus_mqtt import MqttBus
from provisioner.clock import SimulatedClock
from provisioner.demand_signal import WakeListener, announce, poke
from provisioner.engine import DecisionEngine
from provisioner.settings import Settings
from provisioner.sources.base import NoticesSubmissions
from provisioner.sources.slurm import SlurmWorkloadSource
from provisioner.store import Store
from tests.engine.conftest import BROKER
from tests.engine.harness import build_engine
from tests.engine.test_bus import MQTT_HOST, MQTT_PORT
from tests.engine.toy import StaticSource, jobs, offering
from tests.services import port_open, service_missing
from tests.slurm.test_demand_sizing import QueueOnly, pending


async def until(check: Callable[[], bool], seconds: float = 3.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


async def started(engine: DecisionEngine, source: StaticSource) -> tuple[asyncio.Task[None], asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run_forever(stop))
    assert await until(lambda: source.calls == 1), "the first cycle"
    return task, stop


async def test_a_message_on_an_external_topic_starts_a_cycle(store: Store, clock: SimulatedClock) -> None:
    bus = InProcessBus()
    store.bus = bus
    cloud = SimulatedCloud("cloud", [offering("m1")], clock, broker_id=BROKER)
    source = StaticSource()
    engine = build_engine(store, {"cloud": cloud}, source)
    engine.settings = dataclasses.replace(engine.settings, wake_topics=("storage/arrivals",))
    task, stop = await started(engine, source)
    try:
        source.jobs.extend(jobs("atlas", 1))
        await bus.publish("storage/arrivals", {"file": "/data/run42.root"})
        assert await until(lambda: len(cloud.live_units()) == 1)
        assert source.calls == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


class NewJobs(StaticSource):
    """A source that says when jobs were submitted (as the Slurm queue source does)."""

    poll_seconds: float = 0.05
    submitted: bool = False

    async def new_submissions(self) -> bool:
        was, self.submitted = self.submitted, False
        return was


async def test_a_submission_the_source_notices_starts_a_cycle(store: Store, clock: SimulatedClock) -> None:
    cloud = SimulatedCloud("cloud", [offering("m1")], clock, broker_id=BROKER)
    source = NewJobs()
    assert isinstance(source, NoticesSubmissions)
    engine = build_engine(store, {"cloud": cloud}, source)
    task, stop = await started(engine, source)
    try:
        source.jobs.extend(jobs("atlas", 2))
        await asyncio.sleep(0.2)
        assert source.calls == 1  # not yet: nobody said anything
        source.submitted = True
        assert await until(lambda: len(cloud.live_units()) == 2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_slurm_source_notices_new_waiting_jobs_but_not_held_ones_or_the_first_look() -> None:
    queue = QueueOnly([pending("1")])
    source = SlurmWorkloadSource(queue, poll_seconds=1)
    assert not await source.new_submissions()  # the first look sets what was there
    queue._jobs.append(pending("2", reason="JobHeldUser"))
    assert not await source.new_submissions()
    queue._jobs.append(pending("3"))
    assert await source.new_submissions()
    assert not await source.new_submissions()
    queue._jobs.append(SlurmJob("4", "user-4", JobState.RUNNING, "debug"))
    assert not await source.new_submissions()
    queue._jobs.append(pending("5"))
    await source.pending()  # a cycle saw it: not news any more
    assert not await source.new_submissions()


async def test_a_poke_on_the_wake_socket_starts_a_cycle(
    store: Store, clock: SimulatedClock, tmp_path: Path
) -> None:
    cloud = SimulatedCloud("cloud", [offering("m1")], clock, broker_id=BROKER)
    source = StaticSource()
    engine = build_engine(store, {"cloud": cloud}, source)
    assert not poke(tmp_path)  # nobody listens yet
    task, stop = await started(engine, source)
    listener = WakeListener(tmp_path, engine.wake)
    assert await listener.open()
    try:
        source.jobs.extend(jobs("atlas", 1))
        await announce(None, tmp_path, {"request_id": "r-1"})  # as `request create` does, without MQTT
        assert await until(lambda: len(cloud.live_units()) == 1)
    finally:
        await listener.close()
        stop.set()
        await asyncio.wait_for(task, 5)
    assert not (tmp_path / "wake.sock").exists()


def test_the_batching_window_comes_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path, batch_idle_seconds=0.1, batch_max_seconds=2, demand_topics=["site/files/#"]
    )
    engine = build_broker(settings, clock=SimulatedClock()).engine
    assert (engine.settings.batch_idle_seconds, engine.settings.batch_max_seconds) == (0.1, 2)
    assert engine.settings.wake_topics == ("site/files/#",)


async def test_mqtt_external_topics_arrive_whatever_the_payload() -> None:
    if not port_open(MQTT_HOST, MQTT_PORT):
        service_missing("Mosquitto", f"nothing listens on {MQTT_HOST}:{MQTT_PORT}; start mosquitto")
    topic = f"test-{uuid.uuid4().hex[:8]}/files"
    bus = MqttBus(MQTT_HOST, MQTT_PORT, broker_id=f"test-{uuid.uuid4().hex[:8]}")
    other = MqttBus(MQTT_HOST, MQTT_PORT, broker_id="someone-else")
    await bus.connect()
    await other.connect()
    try:
        sub = await bus.subscribe_external(f"{topic}/#")
        await asyncio.sleep(0.2)
        await other._client.publish(f"{topic}/run42", b"not json", qos=1)
        await other._client.publish(f"{topic}/run43", b'{"path": "/x"}', qos=1)
        first, second = await sub.get(timeout=5), await sub.get(timeout=5)
        assert (first.topic, first.payload) == (f"{topic}/run42", {"raw": "not json"})
        assert second.payload == {"path": "/x"}
        await sub.close()
    finally:
        await other.close()
        await bus.close()

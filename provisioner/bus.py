"""The event bus interface and its in-process implementation (asyncio queues, MQTT topic filters).

Topics are relative to the broker: `events/<kind>` for stored state changes and `demand` for new
work; the MQTT bus prefixes them with `provisioner/<broker_id>/`. Events are stored in the DB
first and published afterwards (see `provisioner.store`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

EVENTS_PREFIX = "events/"
DEMAND_TOPIC = "demand"


def event_topic(kind: str) -> str:
    return f"{EVENTS_PREFIX}{kind}"


@dataclass(frozen=True, slots=True)
class BusMessage:
    topic: str  # relative topic, e.g. "events/resource.state"
    payload: Mapping[str, Any]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter semantics: `+` matches one level, a trailing `#` any number of levels (even none)."""
    filt = topic_filter.split("/")
    parts = topic.split("/")
    for i, level in enumerate(filt):
        if level == "#":
            return i == len(filt) - 1
        if i >= len(parts):
            return False
        if level not in ("+", parts[i]):
            return False
    return len(parts) == len(filt)


class Subscription:
    """Messages matching one topic filter, in arrival order; iterate it or call `get`."""

    def __init__(self, topic_filter: str, owner: _Dispatcher, maxsize: int = 10_000) -> None:
        self.topic_filter = topic_filter
        self._owner = owner
        self._queue: asyncio.Queue[BusMessage] = asyncio.Queue(maxsize=maxsize)

    def offer(self, message: BusMessage) -> None:
        if topic_matches(self.topic_filter, message.topic):
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                # A subscriber that stopped reading must not block the engine; it loses old news.
                self._queue.get_nowait()
                self._queue.put_nowait(message)

    async def get(self, timeout: float | None = None) -> BusMessage:
        """The next message; TimeoutError if none comes within `timeout` seconds."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        return await asyncio.wait_for(self._queue.get(), timeout)

    def pending(self) -> int:
        return self._queue.qsize()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusMessage:
        return await self._queue.get()

    async def close(self) -> None:
        await self._owner.unsubscribe(self)


class _Dispatcher(Protocol):
    async def unsubscribe(self, subscription: Subscription) -> None: ...


class Bus(Protocol):
    """Publish/subscribe on relative topics; both implementations behave the same to callers."""

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None: ...

    async def subscribe(self, topic_filter: str) -> Subscription: ...

    async def subscribe_external(self, topic_filter: str) -> Subscription:
        """Messages on an absolute topic that is not the broker's own (MQTT: no `provisioner/<id>/`
        prefix, any payload: JSON objects as they are, anything else as {"raw": text})."""
        ...

    async def unsubscribe(self, subscription: Subscription) -> None: ...

    async def close(self) -> None: ...


class InProcessBus:
    """Delivers to subscribers in this process; used when no MQTT broker is configured."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self.published = 0

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        message = BusMessage(topic, dict(payload))
        self.published += 1
        for sub in list(self._subscriptions):
            sub.offer(message)

    async def subscribe(self, topic_filter: str) -> Subscription:
        sub = Subscription(topic_filter, self)
        self._subscriptions.append(sub)
        return sub

    async def subscribe_external(self, topic_filter: str) -> Subscription:
        """In one process there is no outside: the topic is one more topic of this bus."""
        return await self.subscribe(topic_filter)

    async def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    async def close(self) -> None:
        self._subscriptions.clear()


async def open_bus(mqtt_url: str | None, broker_id: str) -> Bus:
    """The MQTT bus when a URL is configured, else the in-process one."""
    if not mqtt_url:
        return InProcessBus()
    from provisioner.bus_mqtt import MqttBus  # only import aiomqtt when it is used

    bus = MqttBus.from_url(mqtt_url, broker_id)
    await bus.connect()
    return bus

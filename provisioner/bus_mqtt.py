"""The event bus over MQTT (aiomqtt): topics `provisioner/<broker_id>/<relative topic>`, JSON payloads."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog

from provisioner.bus import BusMessage, Subscription

log = structlog.get_logger(__name__)


class MqttBus:
    """One MQTT connection; incoming messages are fanned out to local subscriptions by topic filter."""

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        broker_id: str,
        username: str | None = None,
        password: str | None = None,
        qos: int = 1,
    ) -> None:
        self.host = host
        self.port = port
        self.broker_id = broker_id
        self.prefix = f"provisioner/{broker_id}/"
        self.qos = qos
        self._client = aiomqtt.Client(
            host, port, username=username, password=password, identifier=None, timeout=10
        )
        self._subscriptions: list[Subscription] = []
        self._external: list[Subscription] = []  # absolute topic filters (subscribe_external)
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, broker_id: str) -> MqttBus:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"mqtt_url: expected mqtt://host:port, got scheme {parts.scheme!r}")
        return cls(
            parts.hostname,
            parts.port or 1883,
            broker_id=broker_id,
            username=parts.username,
            password=parts.password,
        )

    async def connect(self) -> None:
        await self._client.__aenter__()
        self._reader = asyncio.create_task(self._read(), name="mqtt-bus-reader")

    async def _read(self) -> None:
        async for message in self._client.messages:
            topic = str(message.topic)
            if self._external:
                self._offer_external(topic, message.payload)
            if not topic.startswith(self.prefix):
                continue
            raw = message.payload
            try:
                payload = json.loads(raw if isinstance(raw, bytes | str) else b"{}")
            except ValueError:
                log.warning("bus.mqtt.bad_payload", topic=topic)
                continue
            if not isinstance(payload, dict):
                payload = {"value": payload}
            bus_message = BusMessage(topic.removeprefix(self.prefix), payload)
            for sub in list(self._subscriptions):
                sub.offer(bus_message)

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        body = json.dumps(dict(payload), default=str, sort_keys=True)
        await self._client.publish(self.prefix + topic, body, qos=self.qos)

    async def subscribe(self, topic_filter: str) -> Subscription:
        sub = Subscription(topic_filter, self)
        self._subscriptions.append(sub)
        await self._client.subscribe(self.prefix + topic_filter, qos=self.qos)
        return sub

    async def subscribe_external(self, topic_filter: str) -> Subscription:
        sub = Subscription(topic_filter, self)
        self._external.append(sub)
        await self._client.subscribe(topic_filter, qos=self.qos)
        return sub

    def _offer_external(self, topic: str, raw: Any) -> None:
        text = raw.decode(errors="replace") if isinstance(raw, bytes | bytearray) else str(raw or "")
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        message = BusMessage(topic, payload if isinstance(payload, dict) else {"raw": text})
        for sub in list(self._external):
            sub.offer(message)  # offers only where the absolute filter matches

    async def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._external:
            self._external.remove(subscription)
            if not any(s.topic_filter == subscription.topic_filter for s in self._external):
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._client.unsubscribe(subscription.topic_filter)
            return
        if subscription not in self._subscriptions:
            return
        self._subscriptions.remove(subscription)
        if not any(s.topic_filter == subscription.topic_filter for s in self._subscriptions):
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.unsubscribe(self.prefix + subscription.topic_filter)

    async def close(self) -> None:
        self._subscriptions.clear()
        self._external.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
            self._reader = None
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

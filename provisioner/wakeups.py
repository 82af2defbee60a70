"""What wakes the engine between timer ticks, besides the bus's `demand` topic: external MQTT topics
(a storage system's file-arrival event...) and workload sources that notice new submissions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from provisioner.bus import Bus, Subscription
from provisioner.sources.base import NoticesSubmissions, WorkloadSource

log = structlog.get_logger(__name__)


@dataclass
class Wakeups:
    """The running readers and pollers; `close` stops them all."""

    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in self.subscriptions:
            await sub.close()
        self.tasks.clear()
        self.subscriptions.clear()


async def _read(sub: Subscription, wake: Callable[[], None]) -> None:
    async for message in sub:
        log.info("demand.external", topic=message.topic)
        wake()


async def _poll(source: NoticesSubmissions, name: str, every: float, wake: Callable[[], None]) -> None:
    first = True
    while True:
        if not first:
            await asyncio.sleep(every)
        first = False
        try:
            if await source.new_submissions():
                log.info("demand.submitted", source=name)
                wake()
        except Exception as exc:  # a slow or broken queue must not stop the others, nor the engine
            log.warning("demand.poll_failed", source=name, error=str(exc))


async def start_wakeups(
    bus: Bus | None,
    topics: Sequence[str],
    sources: Sequence[WorkloadSource],
    wake: Callable[[], None],
) -> Wakeups:
    """Subscribe to `topics` (absolute MQTT topic filters, not under the broker's prefix) and poll every
    source that notices new submissions on its own period; each calls `wake`."""
    out = Wakeups()
    if bus is not None:
        for topic in topics:
            sub = await bus.subscribe_external(topic)
            out.subscriptions.append(sub)
            out.tasks.append(asyncio.create_task(_read(sub, wake), name=f"wake-topic:{topic}"))
    for source in sources:
        if isinstance(source, NoticesSubmissions) and source.poll_seconds > 0:
            out.tasks.append(
                asyncio.create_task(
                    _poll(source, source.name, source.poll_seconds, wake), name=f"wake-source:{source.name}"
                )
            )
    return out

"""New demand wakes a running engine at once: announced on the bus, and on the state directory's wake socket.

`announce` is what `request create` and `POST /v1/requests` call after admitting a request: it
publishes on the bus's `demand` topic (the engine in this process, or in any process on MQTT) and
pokes `<state dir>/wake.sock`, a Unix datagram socket a `provisioner run` on this host listens on,
so a request reaches it without MQTT too. Both are best effort: a broker that is not running
plans the request on its next cycle anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from provisioner.bus import DEMAND_TOPIC, Bus

log = structlog.get_logger(__name__)

WAKE_SOCKET = "wake.sock"
_MAX_PATH = 100  # sun_path is 108 bytes on Linux


def wake_socket(state_dir: Path) -> Path:
    return state_dir.resolve() / WAKE_SOCKET


def poke(state_dir: Path) -> bool:
    """Tell a `provisioner run` on this host that there is new demand; False when none listens."""
    path = wake_socket(state_dir)
    if len(str(path)) > _MAX_PATH or not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(b"demand", str(path))
        except OSError:  # nobody bound (a stale file), or the listener's buffer is full: it is awake
            return False
    return True


async def announce(bus: Bus | None, state_dir: Path | None, payload: Mapping[str, Any]) -> None:
    """New demand: on the bus and on this host's wake socket (best effort, never raises)."""
    if bus is not None:
        try:
            await bus.publish(DEMAND_TOPIC, payload)
        except Exception as exc:  # the request is stored; the timer will plan it
            log.warning("demand.publish_failed", error=str(exc))
    if state_dir is not None:
        poke(state_dir)


class _Waker(asyncio.DatagramProtocol):
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._wake()


class WakeListener:
    """Listens on `<state dir>/wake.sock` and calls `wake` for every poke (while open)."""

    def __init__(self, state_dir: Path, wake: Callable[[], None]) -> None:
        self.path = wake_socket(state_dir)
        self._wake = wake
        self._transport: asyncio.BaseTransport | None = None

    async def open(self) -> bool:
        if len(str(self.path)) > _MAX_PATH:
            log.warning("demand.wake_socket_path_too_long", path=str(self.path))
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a previous run's, or another replica's on this host
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Waker(self._wake), sock=sock)
        return True

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            with contextlib.suppress(OSError):
                self.path.unlink()

"""A real HTTP server for the API tests: uvicorn in a background thread on a free port, a broker on temp SQLite."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from provisioner.api import create_app
from provisioner.api.context import ApiContext, ApiSettings
from provisioner.broker import Broker, build_broker
from provisioner.bus import InProcessBus
from provisioner.clock import SimulatedClock
from provisioner.settings import Settings
from tests.services import free_port

T = TypeVar("T")


class LiveServer:
    """The app served over real TCP; `call` runs a coroutine on the server's own event loop."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def context(self) -> ApiContext:
        context: ApiContext = self.app.state.context
        return context

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


# The API tests' "now": never the wall clock, so they pass on any day they are run.
API_NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def broker_factory(root: Path, *, alter: Callable[[Broker], Broker] | None = None) -> Callable[[], Broker]:
    """A broker on simulated backends, the bundled catalog and the example policy, in `root`."""

    def build() -> Broker:
        settings = Settings(
            state_dir=root, database_url=f"sqlite:///{root / 'broker.db'}", broker_id="api-test"
        )
        broker = build_broker(settings, bus=InProcessBus(), clock=SimulatedClock(API_NOW))
        return alter(broker) if alter else broker

    return build


def serve(app: FastAPI) -> Iterator[LiveServer]:
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One open (no token) server shared by a test module."""
    app = create_app(broker_factory(tmp_path_factory.mktemp("api")), settings=ApiSettings(token=None))
    yield from serve(app)


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c

"""An admitted request is announced as new demand, so the engine plans it at once instead of on its timer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from provisioner.api import create_app
from provisioner.api.context import ApiSettings
from provisioner.bus import DEMAND_TOPIC, Subscription
from tests.api.conftest import LiveServer, broker_factory, serve
from tests.api.test_api import CPU_REQUEST, create


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    app = create_app(broker_factory(tmp_path_factory.mktemp("api-demand")), settings=ApiSettings(token=None))
    yield from serve(app)


def test_an_admitted_request_is_published_as_demand_and_a_rejected_one_is_not(server: LiveServer) -> None:
    bus = server.context.broker.store.bus
    assert bus is not None
    sub: Subscription = server.call(bus.subscribe(DEMAND_TOPIC))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        created = create(client, CPU_REQUEST)
        assert created["status"] == "admitted"
        message = server.call(sub.get(timeout=5))
        assert message.payload == {"request_id": created["id"], "experiment": CPU_REQUEST["experiment"]}
        rejected = create(client, {**CPU_REQUEST, "experiment": "not-in-the-policy"})
        assert rejected["status"] == "rejected"
    assert sub.pending() == 0
    server.call(sub.close())

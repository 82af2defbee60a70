"""Measured egress on GCE: each VM's bytes out since creation from Cloud Monitoring's
instance/network/sent_bytes_count, one timeSeries.list per project, through the fake server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from backends.base import TAG_BROKER
from backends.gce import GceBackend
from tests.fakes.gce_server import FakeGce

from .conftest import BROKER, ZONE, gce_config, offering, request_for


def names(fake: FakeGce) -> list[str]:
    return sorted(name for (_zone, name) in fake.instances)


async def test_sent_bytes_since_creation_is_each_vms_bytes_out_counter(fake_gce: FakeGce) -> None:
    backend = GceBackend(gce_config(fake_gce, egress_refresh_seconds=0), BROKER)
    made = [await backend.provision(request_for(offering(), resource_id=f"r{n}")) for n in range(3)]
    by_resource = {m.resource_id: m.provider_id.split("/")[1] for m in made}
    fake_gce.add_foreign_instance(ZONE, "someone-elses", {TAG_BROKER: "other"})
    now = datetime.now(UTC)
    # r0: two samples, one of them load-balanced traffic (another series of the same VM); r1: one.
    fake_gce.send_bytes(ZONE, by_resource["r0"], 3_000_000_000, now)
    fake_gce.send_bytes(ZONE, by_resource["r0"], 1_500_000_000, now, loadbalanced=True)
    fake_gce.send_bytes(ZONE, by_resource["r1"], 200_000_000, now)
    fake_gce.send_bytes(ZONE, "someone-elses", 9_000_000_000, now)  # another broker's VM: never ours
    listed = {r.resource_id: r for r in await backend.list_resources()}
    assert listed["r0"].egress_bytes == 4_500_000_000
    assert listed["r1"].egress_bytes == 200_000_000
    assert listed["r2"].egress_bytes is None  # no data yet: not measured, never a made-up 0
    assert fake_gce.server.calls["time_series_list"] == 1  # one query for the project's VMs
    fake_gce.send_bytes(ZONE, by_resource["r1"], 100_000_000, datetime.now(UTC))
    listed = {r.resource_id: r for r in await backend.list_resources()}
    assert listed["r1"].egress_bytes == 300_000_000
    await backend.close()


async def test_sent_bytes_are_read_once_per_refresh_interval(fake_gce: FakeGce) -> None:
    backend = GceBackend(gce_config(fake_gce), BROKER)  # the default: at most every 300 s
    made = await backend.provision(request_for(offering()))
    name = made.provider_id.split("/")[1]
    fake_gce.send_bytes(ZONE, name, 500_000_000, datetime.now(UTC))
    assert [r.egress_bytes for r in await backend.list_resources()] == [500_000_000]
    fake_gce.send_bytes(ZONE, name, 500_000_000, datetime.now(UTC))
    assert [r.egress_bytes for r in await backend.list_resources()] == [500_000_000]
    assert fake_gce.server.calls["time_series_list"] == 1
    await backend.close()


@pytest.mark.parametrize(("status", "reason"), [(403, "forbidden"), (503, "backendError")])
async def test_monitoring_refused_or_down_keeps_the_listing_and_the_last_counters(
    fake_gce: FakeGce, status: int, reason: str
) -> None:
    backend = GceBackend(gce_config(fake_gce, egress_refresh_seconds=0), BROKER)
    made = await backend.provision(request_for(offering()))
    fake_gce.send_bytes(ZONE, made.provider_id.split("/")[1], 700_000_000, datetime.now(UTC))
    assert [r.egress_bytes for r in await backend.list_resources()] == [700_000_000]
    # A service account without monitoring.timeSeries.list (403), or Cloud Monitoring down past the retries.
    fake_gce.fail("time_series_list", status, reason, times=10)
    (listed,) = await backend.list_resources()
    assert listed.resource_id == "res-1" and listed.egress_bytes == 700_000_000
    await backend.close()


async def test_egress_metrics_off_reads_no_monitoring(fake_gce: FakeGce) -> None:
    backend = GceBackend(gce_config(fake_gce, egress_metrics=False), BROKER)
    made = await backend.provision(request_for(offering()))
    fake_gce.send_bytes(ZONE, made.provider_id.split("/")[1], 700_000_000, datetime.now(UTC))
    assert [r.egress_bytes for r in await backend.list_resources()] == [None]
    assert fake_gce.server.calls["time_series_list"] == 0
    await backend.close()

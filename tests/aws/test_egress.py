"""Measured egress on EC2: each instance's bytes out since launch from CloudWatch NetworkOut.

moto does not make EC2's own metrics, so the tests put NetworkOut datapoints into AWS/EC2 with the
InstanceId dimension, as EC2's basic monitoring does (one Sum per 5 minutes, in Bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backends.aws import AwsBackend
from backends.aws_config import AwsConfig
from backends.base import AuthFailed, BackendError, Throttled
from backends.egress_counters import MAX_POINTS, lifetime_window

from .conftest import CATALOG, REGION, ec2_client, moto_client, offering
from .test_backend_moto import request

pytestmark = pytest.mark.moto


def cloudwatch(endpoint: str) -> Any:
    return moto_client("cloudwatch", endpoint)


def put(cw: Any, instance_id: str, metric: str, value: float, at: datetime, unit: str = "Bytes") -> None:
    cw.put_metric_data(
        Namespace="AWS/EC2",
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                "Timestamp": at,
                "Value": value,
                "Unit": unit,
            }
        ],
    )


def launch_times(endpoint: str) -> dict[str, datetime]:
    found = ec2_client(endpoint).describe_instances()["Reservations"]
    return {i["InstanceId"]: i["LaunchTime"].astimezone(UTC) for r in found for i in r["Instances"]}


async def test_networkout_since_launch_is_each_instances_bytes_out_counter(
    moto: str, make_config: Callable[..., AwsConfig]
) -> None:
    backend = AwsBackend(make_config(moto, egress_refresh_s=0), CATALOG)
    made = [await backend.provision(request(offering("m6i.large"), n)) for n in range(3)]
    ids = [m.provider_id.split("/")[-1] for m in made]
    launched = launch_times(moto)
    cw = cloudwatch(moto)
    # Two 5-minute datapoints for the first instance, one for the second; each stamped at or after
    # its launch (a datapoint is never older than the instance), the last one this very second.
    now = datetime.now(UTC)
    put(cw, ids[0], "NetworkOut", 3e9, launched[ids[0]])
    put(cw, ids[0], "NetworkOut", 1.5e9, now)
    put(cw, ids[1], "NetworkOut", 2e8, now)
    put(cw, ids[1], "NetworkIn", 7e9, now)  # bytes in are free: never counted
    put(cw, ids[2], "CPUUtilization", 50.0, now, unit="Percent")  # another metric: no egress datapoint
    listed = {r.provider_id.split("/")[-1]: r for r in await backend.list_resources()}
    assert listed[ids[0]].egress_bytes == 4_500_000_000
    assert listed[ids[1]].egress_bytes == 200_000_000
    assert listed[ids[2]].egress_bytes is None  # no datapoint yet: not measured, never a made-up 0
    assert backend.api_calls["GetMetricData"] == 1  # one call for the region's instances
    # More traffic: the counter grows by exactly the new datapoint.
    put(cw, ids[1], "NetworkOut", 1e8, now)
    listed = {r.provider_id.split("/")[-1]: r for r in await backend.list_resources()}
    assert listed[ids[1]].egress_bytes == 300_000_000
    assert listed[ids[0]].egress_bytes == 4_500_000_000
    await backend.close()


async def test_networkout_is_read_once_per_refresh_interval_and_never_goes_back(
    moto: str, make_config: Callable[..., AwsConfig]
) -> None:
    backend = AwsBackend(make_config(moto), CATALOG)  # the default: NetworkOut at most every 300 s
    made = await backend.provision(request(offering("m6i.large")))
    iid = made.provider_id.split("/")[-1]
    cw = cloudwatch(moto)
    put(cw, iid, "NetworkOut", 5e8, datetime.now(UTC))
    assert [r.egress_bytes for r in await backend.list_resources()] == [500_000_000]
    put(cw, iid, "NetworkOut", 5e8, datetime.now(UTC))
    # Within the refresh interval the last reading stands: no second metric read (billed per metric).
    assert [r.egress_bytes for r in await backend.list_resources()] == [500_000_000]
    assert backend.api_calls["GetMetricData"] == 1
    # An answer lower than what was already reported (a datapoint missing from it) keeps the counter:
    # a dip followed by the datapoint's return would count its bytes twice.
    backend._egress.record(REGION, {iid: 2_000_000_000}, [iid])
    backend._egress.forget(REGION)
    assert [r.egress_bytes for r in await backend.list_resources()] == [2_000_000_000]
    assert backend.api_calls["GetMetricData"] == 2
    await backend.close()


async def test_a_terminated_instance_is_still_measured_while_its_last_datapoints_arrive(
    moto: str, make_config: Callable[..., AwsConfig]
) -> None:
    backend = AwsBackend(make_config(moto, egress_refresh_s=0), CATALOG)
    made = await backend.provision(request(offering("m6i.large")))
    iid = made.provider_id.split("/")[-1]
    await backend.release(made.provider_id)
    put(cloudwatch(moto), iid, "NetworkOut", 6e8, datetime.now(UTC))
    (gone,) = await backend.list_resources()
    assert gone.state == "terminated"
    assert gone.egress_bytes == 600_000_000
    await backend.close()


def test_an_instance_long_stopped_is_no_longer_read() -> None:
    backend = AwsBackend(AwsConfig(broker_id="b", regions=[{"region": REGION}]), CATALOG)  # type: ignore[list-item]
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    base = {"InstanceId": "i-0123456789abcdef0", "LaunchTime": now - timedelta(hours=3)}

    def gone(minutes_ago: int) -> dict[str, object]:
        stopped = (now - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%d %H:%M:%S")
        return {
            **base,
            "State": {"Name": "terminated"},
            "StateTransitionReason": f"User initiated ({stopped} GMT)",
        }

    assert backend._egress_wanted({**base, "State": {"Name": "running"}}, now)
    assert not backend._egress_wanted({**base, "State": {"Name": "pending"}}, now)
    assert backend._egress_wanted(gone(20), now)
    assert not backend._egress_wanted(gone(45), now)


async def test_egress_metrics_off_reads_no_cloudwatch(
    moto: str, make_config: Callable[..., AwsConfig]
) -> None:
    backend = AwsBackend(make_config(moto, egress_metrics=False), CATALOG)
    await backend.provision(request(offering("m6i.large")))
    assert [r.egress_bytes for r in await backend.list_resources()] == [None]
    assert backend.api_calls["GetMetricData"] == 0
    await backend.close()


@pytest.mark.parametrize("error", [AuthFailed, Throttled])
async def test_cloudwatch_refused_or_failing_keeps_the_listing_and_the_last_counters(
    moto: str,
    make_config: Callable[..., AwsConfig],
    monkeypatch: pytest.MonkeyPatch,
    error: type[BackendError],
) -> None:
    backend = AwsBackend(make_config(moto, egress_refresh_s=0), CATALOG)
    made = await backend.provision(request(offering("m6i.large")))
    put(cloudwatch(moto), made.provider_id.split("/")[-1], "NetworkOut", 7e8, datetime.now(UTC))
    assert [r.egress_bytes for r in await backend.list_resources()] == [700_000_000]

    real_call = backend._call

    async def call(operation: str, fn: Callable[[], Any], **kw: Any) -> Any:
        if operation == "GetMetricData":
            # A role without cloudwatch:GetMetricData (AccessDenied), or CloudWatch throttling past the retries.
            raise error("aws", "GetMetricData: refused")
        return await real_call(operation, fn, **kw)

    monkeypatch.setattr(backend, "_call", call)
    (listed,) = await backend.list_resources()
    assert listed.state == "running" and listed.egress_bytes == 700_000_000
    await backend.close()


def test_the_lifetime_window_starts_at_the_launch_hour_and_caps_the_values_per_instance() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    young = lifetime_window(datetime(2026, 11, 30, 9, 58, 30, tzinfo=UTC), now)
    assert (young.start, young.end, young.period_s) == (
        datetime(2026, 11, 30, 9, 0, tzinfo=UTC),  # the 09:55 datapoint holds bytes sent after 09:58:30
        now + timedelta(minutes=1),
        3600,
    )
    old = lifetime_window(now - timedelta(days=90), now)
    hours = (old.end - old.start).total_seconds() / 3600
    assert old.period_s % 3600 == 0 and hours / (old.period_s / 3600) <= MAX_POINTS

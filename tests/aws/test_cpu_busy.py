"""Provider metrics as the busy signal: CloudWatch CPU says busy or idle; no datapoint is no signal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import boto3
import pytest

from backends.aws import AwsBackend
from backends.aws_config import AwsConfig

from .conftest import CATALOG, KEY_ID, REGION, SECRET, offering
from .test_backend_moto import request

pytestmark = pytest.mark.moto


async def test_cloudwatch_cpu_marks_running_vms_busy_or_idle_and_silence_is_no_signal(
    moto: str, make_config: Callable[..., AwsConfig]
) -> None:
    backend = AwsBackend(make_config(moto, cpu_busy_percent=20.0), CATALOG)
    made = [await backend.provision(request(offering("m6i.large"), n)) for n in range(3)]
    ids = [m.provider_id.split("/")[-1] for m in made]
    cw = boto3.client(
        "cloudwatch", region_name=REGION, endpoint_url=moto, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    now = datetime.now(UTC)
    for iid, cpu in ((ids[0], 85.0), (ids[1], 2.5)):
        cw.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                    "Timestamp": now,
                    "Value": cpu,
                    "Unit": "Percent",
                }
            ],
        )
    listed = {r.provider_id.split("/")[-1]: r for r in await backend.list_resources()}
    assert listed[ids[0]].busy is True
    assert listed[ids[1]].busy is False
    assert listed[ids[2]].busy is None  # no datapoint: nothing tells, never idle on a guess
    await backend.close()


async def test_without_cpu_threshold_a_listing_carries_no_busy_signal(
    moto: str, make_config: Callable[..., AwsConfig]
) -> None:
    backend = AwsBackend(make_config(moto, egress_metrics=False), CATALOG)  # egress reads CloudWatch too
    await backend.provision(request(offering("m6i.large")))
    assert [r.busy for r in await backend.list_resources()] == [None]
    assert backend.api_calls["GetMetricData"] == 0
    await backend.close()

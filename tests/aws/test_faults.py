"""EC2 failures as EC2 sends them (real HTTP error documents through a proxy in front of moto),
mapped to the typed backend errors; interruption notices and quotas parsed from real responses."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable

import pytest
import structlog

from backends.aws import AwsBackend
from backends.aws_config import AwsConfig
from backends.base import (
    AuthFailed,
    BackendError,
    BackendTimeout,
    CapacityUnavailable,
    InvalidRequest,
    QuotaExceeded,
    Throttled,
)
from provisioner.domain import Market
from tests.services import free_port

from .conftest import CATALOG, KEY_ID, SECRET, offering
from .faultproxy import Fault, FaultProxy
from .test_backend_moto import request

pytestmark = pytest.mark.moto


async def test_throttled_launch_is_retried_then_succeeds(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    proxy.faults.append(
        Fault("RunInstances", 503, "RequestLimitExceeded", "Request limit exceeded.", times=2)
    )
    backend = via_proxy(max_attempts=4)
    res = await backend.provision(request(offering("m6i.large")))
    assert proxy.count("RunInstances") == 3
    assert [r.provider_id for r in await backend.list_resources()] == [res.provider_id]
    await backend.close()


async def test_persistent_throttling_gives_up_after_bounded_attempts(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    proxy.faults.append(Fault("DescribeInstances", 400, "Throttling", "Rate exceeded"))
    backend = via_proxy(max_attempts=3)
    with pytest.raises(Throttled, match="Throttling") as err:
        await backend.list_resources()
    assert err.value.retryable
    assert proxy.count("DescribeInstances") == 3
    await backend.close()


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("InsufficientInstanceCapacity", 500, CapacityUnavailable),
        ("SpotMaxPriceTooLow", 400, CapacityUnavailable),
        ("InsufficientCapacity", 400, CapacityUnavailable),
        ("InstanceLimitExceeded", 400, QuotaExceeded),
        ("VcpuLimitExceeded", 400, QuotaExceeded),
        ("MaxSpotInstanceCountExceeded", 400, QuotaExceeded),
        ("AuthFailure", 401, AuthFailed),
        ("UnauthorizedOperation", 403, AuthFailed),
        ("InvalidClientTokenId", 403, AuthFailed),
        ("ExpiredToken", 400, AuthFailed),
        ("InvalidAMIID.NotFound", 400, InvalidRequest),
        ("InvalidAMIID.Malformed", 400, InvalidRequest),
        ("InvalidParameterValue", 400, InvalidRequest),
        ("IdempotentParameterMismatch", 400, InvalidRequest),
    ],
)
async def test_launch_error_codes_map_to_typed_errors(
    proxy: FaultProxy,
    via_proxy: Callable[..., AwsBackend],
    code: str,
    status: int,
    expected: type[BackendError],
) -> None:
    proxy.faults.append(Fault("RunInstances", status, code, f"simulated {code}"))
    backend = via_proxy()
    o = offering("m6i.large", Market.SPOT)
    with pytest.raises(expected, match=code) as err:
        await backend.provision(request(o))
    assert type(err.value) is expected
    assert err.value.offering_id == o.id
    assert proxy.count("RunInstances") == 1  # not retried
    assert await backend.list_resources() == []
    await backend.close()


async def test_slow_endpoint_is_a_backend_timeout(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    proxy.faults.append(Fault("DescribeInstances", 200, body="", delay_s=1.0))
    backend = via_proxy(read_timeout_s=0.2, max_attempts=2)
    with pytest.raises(BackendTimeout, match="ReadTimeoutError"):
        await backend.list_resources()
    assert proxy.count("DescribeInstances") == 2
    await backend.close()


async def test_unreachable_endpoint_is_a_backend_timeout(make_config: Callable[..., AwsConfig]) -> None:
    backend = AwsBackend(make_config(f"http://127.0.0.1:{free_port()}", max_attempts=2), CATALOG)
    with pytest.raises(BackendTimeout, match="EndpointConnectionError"):
        await backend.release("us-east-1/i-0123456789abcdef0")
    await backend.close()


async def test_credentials_never_appear_in_errors_or_logs(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend], caplog: pytest.LogCaptureFixture
) -> None:
    # What a signature mismatch really quotes back: the credential scope with the key id.
    message = (
        "The request signature we calculated does not match the signature you provided. "
        f"Canonical String: POST / Credential={KEY_ID}/20261123/us-east-1/ec2/aws4_request {SECRET}"
    )
    proxy.faults.append(Fault("RunInstances", 403, "SignatureDoesNotMatch", message))
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="backends")
    backend = via_proxy()
    with structlog.testing.capture_logs() as logs, pytest.raises(AuthFailed) as err:
        await backend.provision(request(offering("m7g.large")))
    texts = [
        str(err.value),
        repr(err.value),
        "".join(traceback.format_exception(err.value)),
        json.dumps(logs, default=str),
        caplog.text,
    ]
    assert "SignatureDoesNotMatch" in str(err.value)
    assert "Credential=<redacted" in str(err.value)  # the provider's text was kept, minus the key
    assert any(log["event"] == "aws.api_error" for log in logs)
    for text in texts:
        assert KEY_ID not in text
        assert SECRET not in text
    await backend.close()


SPOT_NOTICE = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeSpotInstanceRequestsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>7c1e4a55-0000-0000-0000-000000000001</requestId>
<spotInstanceRequestSet><item>
<spotInstanceRequestId>sir-abcd1234</spotInstanceRequestId><state>active</state>
<status><code>marked-for-termination</code><updateTime>2026-11-23T18:00:00.000Z</updateTime>
<message>Your Spot Instance is marked for termination.</message></status>
<instanceId>{iid}</instanceId><type>one-time</type>
</item></spotInstanceRequestSet></DescribeSpotInstanceRequestsResponse>"""

RETIREMENT = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstanceStatusResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>7c1e4a55-0000-0000-0000-000000000002</requestId>
<instanceStatusSet><item><instanceId>{iid}</instanceId><availabilityZone>us-east-1a</availabilityZone>
<instanceState><code>16</code><name>running</name></instanceState>
<eventsSet><item><code>instance-retirement</code>
<description>The instance is running on degraded hardware</description>
<notBefore>2026-11-30T00:00:00.000Z</notBefore></item></eventsSet>
</item></instanceStatusSet></DescribeInstanceStatusResponse>"""


async def test_spot_interruption_notice_is_reported(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    backend = via_proxy(watch_scheduled_events=False)
    hit = await backend.provision(request(offering("m6i.large", Market.SPOT), n=1))
    calm = await backend.provision(request(offering("m6i.large", Market.SPOT), n=2))
    iid = hit.provider_id.split("/", 1)[1]
    proxy.faults.append(Fault("DescribeSpotInstanceRequests", 200, body=SPOT_NOTICE.format(iid=iid)))
    listed = {r.provider_id: r for r in await backend.list_resources()}
    assert listed[hit.provider_id].interruption_notice
    assert "marked-for-termination" in listed[hit.provider_id].detail
    assert not listed[calm.provider_id].interruption_notice
    assert proxy.count("DescribeSpotInstanceRequests") == 1  # one query for all spot instances
    await backend.close()


async def test_scheduled_retirement_is_reported_as_a_notice(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    backend = via_proxy()
    hit = await backend.provision(request(offering("m6i.large"), n=1))
    calm = await backend.provision(request(offering("m6i.large"), n=2))
    iid = hit.provider_id.split("/", 1)[1]
    proxy.faults.append(Fault("DescribeInstanceStatus", 200, body=RETIREMENT.format(iid=iid)))
    listed = {r.provider_id: r for r in await backend.list_resources()}
    assert listed[hit.provider_id].interruption_notice
    assert "instance-retirement" in listed[hit.provider_id].detail
    assert not listed[calm.provider_id].interruption_notice
    assert proxy.count("DescribeSpotInstanceRequests") == 0  # no spot instances: no spot query
    await backend.close()


async def test_quota_vcpus_reads_ec2_vcpu_quotas(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    body = json.dumps(
        {
            "Quotas": [
                {"ServiceCode": "ec2", "QuotaCode": "L-1216C47A", "Value": 640.0, "Unit": "None"},
                {"ServiceCode": "ec2", "QuotaCode": "L-34B43A08", "Value": 256.0, "Unit": "None"},
                {
                    "ServiceCode": "ec2",
                    "QuotaCode": "L-0263D0A3",
                    "Value": 5.0,
                    "Unit": "None",
                },  # Elastic IPs
            ]
        }
    )
    proxy.faults.append(Fault("ListServiceQuotas", 200, body=body, content_type="application/x-amz-json-1.1"))
    backend = via_proxy()
    assert await backend.quota_vcpus() == {"us-east-1:L-1216C47A": 640, "us-east-1:L-34B43A08": 256}
    await backend.close()


async def test_spot_price_failure_keeps_catalog_prices(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    proxy.faults.append(Fault("DescribeSpotPriceHistory", 400, "InvalidParameterValue", "bad product"))
    backend = via_proxy()
    offers = await backend.offerings()
    assert [o.price_per_hour for o in offers] == [o.price_per_hour for o in CATALOG]
    await backend.close()


async def test_auth_failure_on_spot_prices_is_raised(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    proxy.faults.append(Fault("DescribeSpotPriceHistory", 401, "AuthFailure", "AWS was not able to validate"))
    backend = via_proxy()
    with pytest.raises(AuthFailed):
        await backend.offerings()
    await backend.close()


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("RunInstances", '<?xml version="1.0"?><RunInstancesResponse><reservationId>r-1</reservationId>'),
        ("RunInstances", "<<<not xml at all"),
        (
            "RunInstances",
            "<RunInstancesResponse><instancesSet><item><imageId>ami-1</imageId></item>"
            "</instancesSet></RunInstancesResponse>",
        ),
        (
            "DescribeInstances",
            "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>"
            "<instanceState><name>running</name></instanceState></item></instancesSet></item>"
            "</reservationSet></DescribeInstancesResponse>",
        ),
    ],
)
async def test_malformed_answers_are_a_typed_malformed_answer_not_a_crash(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend], action: str, body: str
) -> None:
    from backends.base import MalformedAnswer

    proxy.faults.append(Fault(action, 200, body=body))
    backend = via_proxy()
    with pytest.raises(MalformedAnswer):
        if action == "RunInstances":
            await backend.provision(request(offering("m6i.large")))
        else:
            await backend.list_resources()
    await backend.close()

"""The EC2 backend against a real moto_server over HTTP: launch, idempotency, listing, release, prices."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from backends.aws import TAG_TOKEN, AwsBackend, quota_code_for
from backends.aws_config import AwsConfig, AwsRegionConfig, ImageChoice, LaunchTemplateRef, LaunchTemplates
from backends.base import (
    TAG_BROKER,
    TAG_OFFERING,
    TAG_RESOURCE,
    AuthFailed,
    Backend,
    InvalidRequest,
    ProviderState,
    ProvisionRequest,
)
from provisioner.domain import Market, Offering

from .conftest import BROKER, CATALOG, REGION, offering

pytestmark = pytest.mark.moto


def request(o: Offering, n: int = 1, token: str | None = None, **kw: Any) -> ProvisionRequest:
    return ProvisionRequest(
        resource_id=f"res-{n}",
        offering=o,
        idempotency_token=token or f"tok-{n}",
        broker_id=BROKER,
        group_id="grp-1",
        experiment="atlas",
        **kw,
    )


def describe(backend: AwsBackend, provider_id: str) -> dict[str, Any]:
    iid = provider_id.split("/", 1)[1]
    res = backend.client(REGION).describe_instances(InstanceIds=[iid])
    return dict(res["Reservations"][0]["Instances"][0])


def count_calls(backend: AwsBackend) -> Counter[str]:
    """Count HTTP requests by operation with a botocore event hook on the backend's client."""
    calls: Counter[str] = Counter()

    def hook(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    backend.client(REGION).meta.events.register("before-call", hook)
    return calls


def bulk_launch(backend: AwsBackend, ami: str, count: int, per_call: int, broker: str = BROKER) -> None:
    ec2 = backend.client(REGION)
    tags = [{"Key": TAG_BROKER, "Value": broker}, {"Key": TAG_RESOURCE, "Value": "bulk"}]
    left = count
    while left:
        n = min(per_call, left)
        ec2.run_instances(
            ImageId=ami,
            InstanceType="m6i.large",
            MinCount=n,
            MaxCount=n,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        left -= n


async def test_backend_satisfies_the_protocol(backend: AwsBackend) -> None:
    assert isinstance(backend, Backend)


async def test_on_demand_x86_launch_is_tagged_and_listed(backend: AwsBackend, amis: dict[str, str]) -> None:
    o = offering("m6i.large")
    res = await backend.provision(request(o))
    assert res.provider_id.startswith(f"{REGION}/i-")
    assert res.resource_id == "res-1" and res.offering_id == o.id
    assert res.state in (ProviderState.PENDING, ProviderState.RUNNING)
    inst = describe(backend, res.provider_id)
    assert inst["InstanceType"] == "m6i.large"
    assert inst["ImageId"] == amis["x86_64"]
    assert inst.get("InstanceLifecycle") != "spot"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[TAG_BROKER] == BROKER and tags[TAG_RESOURCE] == "res-1" and tags[TAG_OFFERING] == o.id
    assert tags["provisioner-experiment"] == "atlas" and tags[TAG_TOKEN] == "tok-1"
    assert tags["Name"] == f"{BROKER}/res-1"
    listed = await backend.list_resources()
    assert [r.provider_id for r in listed] == [res.provider_id]
    assert listed[0].launched_at is not None and listed[0].launched_at.tzinfo is not None


async def test_graviton_offering_boots_the_arm64_image(backend: AwsBackend, amis: dict[str, str]) -> None:
    res = await backend.provision(request(offering("m7g.large")))
    inst = describe(backend, res.provider_id)
    assert inst["InstanceType"] == "m7g.large"
    assert inst["ImageId"] == amis["arm64"]


async def test_gpu_offering_boots_the_gpu_image(backend: AwsBackend, amis: dict[str, str]) -> None:
    res = await backend.provision(request(offering("g5.xlarge")))
    inst = describe(backend, res.provider_id)
    assert inst["InstanceType"] == "g5.xlarge"
    assert inst["ImageId"] == amis["gpu_x86_64"] != amis["x86_64"]


async def test_spot_offering_launches_a_spot_instance_in_its_zone(backend: AwsBackend) -> None:
    o = offering("m6i.large", Market.SPOT, zone="us-east-1b")
    res = await backend.provision(request(o))
    inst = describe(backend, res.provider_id)
    assert inst["InstanceLifecycle"] == "spot"
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    listed = await backend.list_resources()
    assert listed[0].interruption_notice is False
    assert "spot" in listed[0].detail
    assert listed[0].zone == "us-east-1b"  # the zone billing prices its spot time in


async def test_same_token_twice_yields_one_instance(backend: AwsBackend) -> None:
    o = offering("m6i.large", Market.SPOT)
    first = await backend.provision(request(o, token="same-token"))
    again = await backend.provision(request(o, token="same-token"))
    assert again.provider_id == first.provider_id
    assert len(await backend.list_resources()) == 1
    other = await backend.provision(request(o, n=2, token="other-token"))
    assert other.provider_id != first.provider_id
    assert len(await backend.list_resources()) == 2


async def test_unknown_instance_type_is_rejected_before_any_call(backend: AwsBackend) -> None:
    calls = count_calls(backend)
    bogus = replace(offering("m6i.large"), instance_type="m99x.huge", id="aws:us-east-1:m99x.huge:on_demand")
    with pytest.raises(InvalidRequest, match=r"m99x\.huge is not in the catalog") as err:
        await backend.provision(request(bogus))
    assert err.value.offering_id == bogus.id
    assert sum(calls.values()) == 0
    assert await backend.list_resources() == []


async def test_missing_gpu_image_names_the_setting(moto: str, make_config: Callable[..., AwsConfig]) -> None:
    cfg = make_config(
        moto, regions=[AwsRegionConfig(region=REGION, images=ImageChoice(x86_64="ami-12345678"))]
    )
    b = AwsBackend(cfg, CATALOG)
    with pytest.raises(InvalidRequest, match=r"images\.gpu_x86_64"):
        await b.provision(request(offering("g5.xlarge")))
    await b.close()


async def test_launch_template_supplies_the_image(
    moto: str, make_config: Callable[..., AwsConfig], amis: dict[str, str]
) -> None:
    templates = LaunchTemplates(arm64=LaunchTemplateRef(name="graviton-pilot"))
    cfg = make_config(moto, regions=[AwsRegionConfig(region=REGION, launch_templates=templates)])
    b = AwsBackend(cfg, CATALOG)
    b.client(REGION).create_launch_template(
        LaunchTemplateName="graviton-pilot", LaunchTemplateData={"ImageId": amis["arm64"]}
    )
    res = await b.provision(request(offering("m7g.large")))
    inst = describe(b, res.provider_id)
    assert inst["ImageId"] == amis["arm64"] and inst["InstanceType"] == "m7g.large"
    with pytest.raises(InvalidRequest, match=r"images\.x86_64 or launch_templates\.x86_64"):
        await b.provision(request(offering("m6i.large"), n=2))
    await b.close()


async def test_other_brokers_instances_are_not_listed(backend: AwsBackend, amis: dict[str, str]) -> None:
    bulk_launch(backend, amis["x86_64"], 3, 3, broker="someone-else")
    mine = await backend.provision(request(offering("c6i.large")))
    assert [r.provider_id for r in await backend.list_resources()] == [mine.provider_id]


async def test_release_then_release_again_is_not_an_error(backend: AwsBackend) -> None:
    res = await backend.provision(request(offering("m6i.large")))
    await backend.release(res.provider_id)
    await backend.release(res.provider_id)
    await backend.release(f"{REGION}/i-0123456789abcdef0")  # never existed
    (listed,) = await backend.list_resources()
    assert listed.state in (ProviderState.STOPPING, ProviderState.TERMINATED)


async def test_release_many_skips_unknown_ids_and_terminates_the_rest(backend: AwsBackend) -> None:
    a = await backend.provision(request(offering("m6i.large"), n=1))
    b = await backend.provision(request(offering("m7g.large"), n=2))
    c = await backend.provision(request(offering("c6i.large"), n=3))
    ghost = f"{REGION}/i-0aaaaaaaaaaaaaaaa"
    await backend.release_many([a.provider_id, ghost, c.provider_id.split("/", 1)[1]])
    states = {r.provider_id: r.state for r in await backend.list_resources()}
    assert states[a.provider_id] in (ProviderState.STOPPING, ProviderState.TERMINATED)
    assert states[c.provider_id] in (ProviderState.STOPPING, ProviderState.TERMINATED)
    assert states[b.provider_id] in (ProviderState.PENDING, ProviderState.RUNNING)


async def test_malformed_provider_region_is_an_invalid_request(backend: AwsBackend) -> None:
    with pytest.raises(InvalidRequest, match="eu-north-9"):
        await backend.release("eu-north-9/i-0123456789abcdef0")


async def test_listing_follows_pages(
    moto: str, make_config: Callable[..., AwsConfig], amis: dict[str, str]
) -> None:
    # moto pages by reservation: 30 one-instance reservations at 10 a page are 3 pages.
    b = AwsBackend(make_config(moto, page_size=10, watch_scheduled_events=False), CATALOG)
    bulk_launch(b, amis["x86_64"], 30, 1)
    calls = count_calls(b)
    listed = await b.list_resources()
    assert len({r.provider_id for r in listed}) == 30
    assert calls["DescribeInstances"] == 3
    await b.close()


async def test_listing_2500_instances_takes_pages_not_calls_per_instance(
    moto: str, make_config: Callable[..., AwsConfig], amis: dict[str, str]
) -> None:
    # Scheduled events off: moto ignores their filter and would dump 2,500 statuses (slow, not wrong).
    # A long read timeout: moto builds a 1,000-instance page slowly on a loaded machine, and this
    # test counts calls, not seconds.
    backend = AwsBackend(make_config(moto, watch_scheduled_events=False, read_timeout_s=300), CATALOG)
    bulk_launch(backend, amis["x86_64"], 2500, 500)
    calls = count_calls(backend)
    listed = await backend.list_resources()
    assert len({r.provider_id for r in listed}) == 2500
    assert all(r.resource_id == "bulk" and r.state is ProviderState.RUNNING for r in listed)
    assert calls["DescribeInstances"] <= 3
    assert sum(calls.values()) == calls["DescribeInstances"]  # no per-instance follow-up calls
    assert backend.api_calls["GetMetricData"] == 5  # CloudWatch NetworkOut (egress): 500 instances a call
    await backend.close()


async def test_offerings_take_the_live_spot_price(backend: AwsBackend) -> None:
    calls = count_calls(backend)
    offers = {o.id: o for o in await backend.offerings()}
    assert set(offers) == {o.id for o in CATALOG}
    live = Decimal("0.00001")  # moto's flat spot price
    assert offers["aws:us-east-1:m6i.large:spot"].price_per_hour == live
    assert offers["aws:us-east-1b:m6i.large:spot"].price_per_hour == live
    assert offers["aws:us-east-1:m7g.large:spot"].price_per_hour == live
    assert offers["aws:us-east-1:m6i.large:on_demand"].price_per_hour == Decimal("0.096")
    assert calls["DescribeSpotPriceHistory"] == 1  # all spot types of the region in one query


async def test_spot_price_history_gives_zonal_points_for_billing(backend: AwsBackend) -> None:
    from datetime import UTC, datetime

    start, end = datetime(2020, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)  # all moto has
    points = await backend.spot_price_history(REGION, ["m6i.large"], start, end)
    assert points and {p.instance_type for p in points} == {"m6i.large"}
    assert all(p.zone.startswith(REGION) and p.price_per_hour == Decimal("0.00001") for p in points)


async def test_unknown_profile_is_an_auth_failure(moto: str, make_config: Callable[..., AwsConfig]) -> None:
    b = AwsBackend(make_config(moto, profile="no-such-profile"), CATALOG)
    with pytest.raises(AuthFailed, match="ProfileNotFound"):
        await b.list_resources()
    await b.close()


async def test_quota_vcpus_is_empty_where_moto_lacks_service_quotas(backend: AwsBackend) -> None:
    assert await backend.quota_vcpus() == {}


@pytest.mark.parametrize(
    ("instance_type", "market", "code"),
    [
        ("m7g.large", Market.ON_DEMAND, "L-1216C47A"),
        ("im4gn.large", Market.SPOT, "L-34B43A08"),
        ("g5.xlarge", Market.ON_DEMAND, "L-DB2E81BA"),
        ("p4d.24xlarge", Market.SPOT, "L-7212CCBC"),
        ("inf2.xlarge", Market.ON_DEMAND, None),
        ("hpc7g.4xlarge", Market.ON_DEMAND, None),
    ],
)
def test_quota_code_covers_the_instance_family(instance_type: str, market: Market, code: str | None) -> None:
    assert quota_code_for(instance_type, market) == code

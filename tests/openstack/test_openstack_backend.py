"""OpenStack backend behaviour through libcloud's real OpenStack driver against the fake Keystone/Nova."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from backends.base import (
    TAG_BROKER,
    AuthFailed,
    Backend,
    BackendError,
    BackendTimeout,
    CapacityUnavailable,
    InvalidRequest,
    ProviderState,
    QuotaExceeded,
    Throttled,
)
from backends.openstack import TOKEN_METADATA_KEY, OpenStackBackend, token_hash
from backends.openstack_config import OpenStackConfig
from provisioner.domain import Arch, Market
from tests.fakes.nova_server import FakeNova
from tests.openstack.conftest import BROKER, os_config, os_offering, os_request


def only_server(fake: FakeNova) -> dict[str, Any]:
    assert len(fake.servers) == 1, list(fake.servers)
    return next(iter(fake.servers.values()))


async def test_backend_satisfies_protocol(nova: OpenStackBackend) -> None:
    assert isinstance(nova, Backend)


async def test_provision_creates_tagged_server_and_waits_for_active(fake_nova: FakeNova) -> None:
    fake_nova.build_polls = 3
    backend = OpenStackBackend(os_config(fake_nova), BROKER)
    res = await backend.provision(os_request(os_offering()))
    server = only_server(fake_nova)
    assert res.state is ProviderState.RUNNING
    assert res.provider_id == server["id"]
    assert res.resource_id == "res-1"
    assert res.offering_id == "hepcloud:RegionOne:m1.large:on_demand"
    assert res.tags["provisioner-experiment"] == "dune"
    assert TOKEN_METADATA_KEY not in res.tags
    assert server["metadata"][TOKEN_METADATA_KEY] == token_hash("token-res-1")
    assert server["image"]["id"] == "img-x86" and server["flavor"]["id"] == "1"
    assert server["key_name"] == "broker-key" and server["_networks"] == [{"uuid": "net-1"}]
    assert fake_nova.server.calls["get"] == 3  # BUILD until the third look
    assert res.launched_at is not None and res.launched_at.tzinfo is not None


async def test_still_building_after_the_wait_is_returned_pending(fake_nova: FakeNova) -> None:
    fake_nova.build_polls = 10_000
    backend = OpenStackBackend(os_config(fake_nova, build_wait_seconds=0.05), BROKER)
    res = await backend.provision(os_request(os_offering()))
    assert res.state is ProviderState.PENDING


async def test_arm_offering_boots_the_arm_image(nova: OpenStackBackend, fake_nova: FakeNova) -> None:
    await nova.provision(os_request(os_offering("a1.large", Arch.ARM64)))
    assert only_server(fake_nova)["image"]["id"] == "img-arm"


async def test_arch_not_matching_the_flavour_is_invalid(nova: OpenStackBackend, fake_nova: FakeNova) -> None:
    with pytest.raises(InvalidRequest, match="arch"):
        await nova.provision(os_request(os_offering("a1.large", Arch.X86_64)))
    assert fake_nova.server.calls["create"] == 0


async def test_same_token_gives_one_server(nova: OpenStackBackend, fake_nova: FakeNova) -> None:
    req = os_request(os_offering())
    first = await nova.provision(req)
    again = await nova.provision(req)
    concurrent = await asyncio.gather(*(nova.provision(req) for _ in range(3)))
    assert {first.provider_id, again.provider_id} | {r.provider_id for r in concurrent} == {first.provider_id}
    assert len(fake_nova.servers) == 1
    assert fake_nova.server.calls["create"] == 1


async def test_another_process_with_the_same_token_adopts_the_server(fake_nova: FakeNova) -> None:
    req = os_request(os_offering())
    first = await OpenStackBackend(os_config(fake_nova), BROKER).provision(req)
    after_restart = await OpenStackBackend(os_config(fake_nova), BROKER).provision(req)
    assert after_restart.provider_id == first.provider_id
    assert len(fake_nova.servers) == 1


async def test_duplicate_from_the_race_window_is_deleted_keeping_the_oldest(
    nova: OpenStackBackend, fake_nova: FakeNova
) -> None:
    req = os_request(os_offering())
    first = await nova.provision(req)
    twin = fake_nova.add_twin(first.provider_id)  # a racing process created the same intent again
    assert len(fake_nova.servers) == 2
    again = await nova.provision(req)
    assert again.provider_id == first.provider_id
    assert list(fake_nova.servers) == [first.provider_id]
    assert twin not in fake_nova.servers


async def test_lost_create_reply_is_not_created_twice(nova: OpenStackBackend, fake_nova: FakeNova) -> None:
    fake_nova.lose_create_replies(1)  # Nova creates it, the client sees 503
    res = await nova.provision(os_request(os_offering()))
    assert len(fake_nova.servers) == 1
    assert res.provider_id == only_server(fake_nova)["id"]
    assert fake_nova.server.calls["create"] == 1


async def test_create_retried_after_a_503_that_created_nothing(
    nova: OpenStackBackend, fake_nova: FakeNova
) -> None:
    fake_nova.fail("create", 503, "Service Unavailable", times=1)
    res = await nova.provision(os_request(os_offering()))
    assert res.state is ProviderState.RUNNING
    assert len(fake_nova.servers) == 1
    assert fake_nova.server.calls["create"] == 2


async def test_endpoints_forced_in_config_bypass_the_catalog(fake_nova: FakeNova) -> None:
    config = os_config(
        fake_nova, compute_url=f"{fake_nova.url}/compute/v2.1", image_url=f"{fake_nova.url}/image"
    )
    backend = OpenStackBackend(config, BROKER)
    res = await backend.provision(os_request(os_offering()))
    assert res.state is ProviderState.RUNNING


async def test_list_follows_every_page_and_keeps_only_ours(fake_nova: FakeNova) -> None:
    fake_nova.max_limit = 2
    backend = OpenStackBackend(os_config(fake_nova), BROKER)
    for i in range(5):
        await backend.provision(os_request(os_offering(), resource_id=f"r{i}"))
    other = OpenStackBackend(os_config(fake_nova), "other-broker")
    await other.provision(replace(os_request(os_offering(), resource_id="theirs"), broker_id="other-broker"))
    fake_nova.server.calls.clear()
    found = await backend.list_resources()
    assert sorted(r.resource_id or "" for r in found) == ["r0", "r1", "r2", "r3", "r4"]
    assert all(r.tags[TAG_BROKER] == BROKER for r in found)
    assert fake_nova.server.calls["servers_detail"] == 4  # 6 servers, 2 a page, then an empty page

    fake_nova.max_limit = 1000
    fake_nova.server.calls.clear()
    assert len(await backend.list_resources()) == 5
    assert fake_nova.server.calls["servers_detail"] == 1


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("BUILD", ProviderState.PENDING),
        ("ACTIVE", ProviderState.RUNNING),
        ("SHUTOFF", ProviderState.STOPPING),
        ("ERROR", ProviderState.FAILED),
        ("DELETED", ProviderState.TERMINATED),
    ],
)
async def test_list_maps_nova_statuses(
    nova: OpenStackBackend, fake_nova: FakeNova, status: str, state: ProviderState
) -> None:
    res = await nova.provision(os_request(os_offering()))
    fake_nova.set_status(res.provider_id, status)
    [listed] = await nova.list_resources()
    assert listed.state is state


async def test_no_valid_host_is_capacity_unavailable_and_cleaned_up(
    nova: OpenStackBackend, fake_nova: FakeNova
) -> None:
    fake_nova.fail_scheduling()
    with pytest.raises(CapacityUnavailable, match="No valid host"):
        await nova.provision(os_request(os_offering()))
    assert not fake_nova.servers  # the ERROR server was deleted
    res = await nova.provision(os_request(os_offering(), resource_id="r2"))
    assert res.state is ProviderState.RUNNING


async def test_release_twice_is_fine(nova: OpenStackBackend, fake_nova: FakeNova) -> None:
    res = await nova.provision(os_request(os_offering()))
    await nova.release(res.provider_id)
    assert not fake_nova.servers
    await nova.release(res.provider_id)
    assert await nova.list_resources() == []


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (
            413,
            "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances",
            QuotaExceeded,
        ),
        (403, "Quota exceeded for cores: Requested 4, but already used 98 of 100 cores", QuotaExceeded),
        (413, "This request was rate-limited.", Throttled),
        (429, "Too many requests", Throttled),
        (403, "Policy doesn't allow os_compute_api:servers:create to be performed.", AuthFailed),
        (400, "Invalid flavorRef provided.", InvalidRequest),
    ],
)
async def test_create_errors_map_to_typed_errors(
    nova: OpenStackBackend, fake_nova: FakeNova, status: int, message: str, error: type[BackendError]
) -> None:
    fake_nova.fail("create", status, message, times=99)
    with pytest.raises(error) as info:
        await nova.provision(os_request(os_offering()))
    assert info.value.offering_id == "hepcloud:RegionOne:m1.large:on_demand"
    assert not fake_nova.servers


async def test_rate_limited_listing_is_retried(nova: OpenStackBackend, fake_nova: FakeNova) -> None:
    fake_nova.fail("servers_detail", 429, "Too many requests", times=2)
    assert await nova.list_resources() == []
    assert fake_nova.server.calls["servers_detail"] == 3


async def test_wrong_password_is_auth_failed_and_never_in_the_message(fake_nova: FakeNova) -> None:
    backend = OpenStackBackend(os_config(fake_nova, password="WRONG-pa55word"), BROKER)
    with pytest.raises(AuthFailed) as info:
        await backend.list_resources()
    assert "WRONG-pa55word" not in str(info.value)
    assert "WRONG-pa55word" not in repr(backend.config)


async def test_revoked_token_is_auth_failed_without_the_token(
    nova: OpenStackBackend, fake_nova: FakeNova
) -> None:
    await nova.list_resources()
    issued = set(fake_nova.tokens)
    fake_nova.tokens.clear()
    with pytest.raises(AuthFailed) as info:
        await nova.list_resources()
    assert all(token not in str(info.value) for token in issued)


async def test_offerings_are_priced_flavours_that_exist(nova: OpenStackBackend) -> None:
    offers = {o.instance_type: o for o in await nova.offerings()}
    assert set(offers) == {"m1.large", "a1.large", "g1.a100"}  # retired is disabled, unknown is absent
    assert offers["m1.large"].cores == 4 and offers["m1.large"].memory_gb == 8
    assert offers["m1.large"].price_per_hour == Decimal("0.08")
    assert offers["a1.large"].arch is Arch.ARM64
    assert offers["g1.a100"].gpu_count == 1 and offers["g1.a100"].market is Market.ON_DEMAND
    assert offers["m1.large"].id == "hepcloud:RegionOne:m1.large:on_demand"


async def test_unknown_flavour_in_offering_is_invalid(nova: OpenStackBackend) -> None:
    with pytest.raises(InvalidRequest, match=r"m1\.unknown"):
        await nova.provision(os_request(os_offering("m1.unknown")))


def test_config_rejects_unknown_keys_and_hides_the_password() -> None:
    with pytest.raises(ValidationError, match="pasword"):
        OpenStackConfig.model_validate(
            {
                "auth_url": "http://x",
                "username": "u",
                "pasword": "p",
                "project_name": "p",
                "images": {},
                "flavors": {},
            }
        )
    config = OpenStackConfig.model_validate(
        {
            "auth_url": "http://x",
            "username": "u",
            "password": "hunter2",
            "project_name": "p",
            "images": {"x86_64": "i"},
            "flavors": {"f": {"price_per_hour": "1", "hs23_per_core": 10}},
        }
    )
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


async def test_unanswered_keystone_is_backend_timeout(fake_nova: FakeNova) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        backend = OpenStackBackend(
            os_config(fake_nova, auth_url=url, request_timeout_seconds=1, max_attempts=1), BROKER
        )
        with pytest.raises(BackendTimeout, match="timed out"):
            await backend.list_resources()

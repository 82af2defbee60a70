"""GCE backend behaviour through the real google-cloud-compute client against the fake REST server."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2.credentials import Credentials as TokenCredentials
from hypothesis import given
from hypothesis import strategies as st
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
from backends.gce import (
    TAGS_METADATA_KEY,
    GceBackend,
    instance_name_for,
    label_key,
    label_value,
    request_id_for,
)
from backends.gce_config import GceConfig
from provisioner.domain import Arch, Market
from tests.fakes.gce_server import FakeGce
from tests.gce.conftest import BROKER, ZONE, gce_config, offering, request_for

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def only_instance(fake: FakeGce) -> dict[str, Any]:
    assert len(fake.instances) == 1, list(fake.instances)
    return next(iter(fake.instances.values()))


def metadata(instance: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i["value"] for i in instance["metadata"]["items"]}


async def test_backend_satisfies_protocol(gce: GceBackend) -> None:
    assert isinstance(gce, Backend)


async def test_standard_vm_runs_with_sanitised_labels_and_exact_tags(
    gce: GceBackend, fake_gce: FakeGce
) -> None:
    res = await gce.provision(request_for(offering(), resource_id="Res:ABC/1"))
    body = only_instance(fake_gce)
    assert res.state is ProviderState.RUNNING
    assert res.provider_id == f"{ZONE}/{body['name']}"
    assert res.resource_id == "Res:ABC/1"
    assert res.offering_id == "gce:us-central1-a:n2-standard-4:on_demand"
    assert body["labels"][TAG_BROKER] == "broker-test-1"
    assert body["labels"]["provisioner-resource"] == "res-abc-1"
    assert body["labels"]["provisioner-experiment"] == "atlas"
    assert json.loads(metadata(body)[TAGS_METADATA_KEY])["provisioner-experiment"] == "ATLAS"
    assert body["scheduling"]["provisioningModel"] == "STANDARD"
    assert body["scheduling"]["onHostMaintenance"] == "MIGRATE"
    assert "arm64" not in body["disks"][0]["initializeParams"]["sourceImage"]
    assert res.launched_at is not None and res.launched_at.tzinfo is not None


async def test_spot_vm_is_spot_and_deleted_on_preemption(gce: GceBackend, fake_gce: FakeGce) -> None:
    await gce.provision(request_for(offering(market=Market.SPOT)))
    scheduling = only_instance(fake_gce)["scheduling"]
    assert scheduling["provisioningModel"] == "SPOT"
    assert scheduling["instanceTerminationAction"] == "DELETE"
    assert scheduling["onHostMaintenance"] == "TERMINATE"
    assert scheduling.get("automaticRestart", False) is False


@pytest.mark.parametrize(
    ("machine", "disk_type"), [("t2a-standard-4", "pd-balanced"), ("c4a-standard-4", "hyperdisk-balanced")]
)
async def test_arm_offering_boots_arm64_image(
    gce: GceBackend, fake_gce: FakeGce, machine: str, disk_type: str
) -> None:
    res = await gce.provision(request_for(offering(machine, arch=Arch.ARM64)))
    params = only_instance(fake_gce)["disks"][0]["initializeParams"]
    assert res.state is ProviderState.RUNNING
    assert "arm64" in params["sourceImage"]
    assert params["diskType"].endswith(f"/diskTypes/{disk_type}")


async def test_arch_mismatch_is_rejected_before_any_call(gce: GceBackend, fake_gce: FakeGce) -> None:
    with pytest.raises(InvalidRequest, match="t2a-standard-4 is arm64"):
        await gce.provision(request_for(offering("t2a-standard-4", arch=Arch.X86_64)))
    assert fake_gce.server.calls["insert"] == 0


async def test_n1_t4_attaches_accelerators_and_terminates_on_maintenance(
    gce: GceBackend, fake_gce: FakeGce
) -> None:
    await gce.provision(request_for(offering("n1-standard-8", gpu_model="T4", gpu_count=2)))
    body = only_instance(fake_gce)
    assert body["guestAccelerators"] == [
        {"acceleratorType": f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 2}
    ]
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"


async def test_a2_builtin_gpu_needs_no_accelerators(gce: GceBackend, fake_gce: FakeGce) -> None:
    await gce.provision(request_for(offering("a2-highgpu-1g", gpu_model="A100", gpu_count=1)))
    body = only_instance(fake_gce)
    assert not body.get("guestAccelerators")
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"


async def test_gpu_model_that_cannot_attach_is_invalid(gce: GceBackend, fake_gce: FakeGce) -> None:
    with pytest.raises(InvalidRequest, match="A100"):
        await gce.provision(request_for(offering("n1-standard-8", gpu_model="A100", gpu_count=1)))
    assert not fake_gce.instances


async def test_same_token_gives_one_vm(gce: GceBackend, fake_gce: FakeGce) -> None:
    req = request_for(offering())
    first = await gce.provision(req)
    second = await gce.provision(req)
    concurrent = await asyncio.gather(gce.provision(req), gce.provision(req))
    assert {first.provider_id, second.provider_id} | {r.provider_id for r in concurrent} == {
        first.provider_id
    }
    assert len(fake_gce.instances) == 1
    assert fake_gce.server.calls["insert"] == 4
    assert request_id_for(req.idempotency_token) in fake_gce.request_ids


async def test_retry_after_request_id_expired_adopts_the_existing_vm(
    gce: GceBackend, fake_gce: FakeGce
) -> None:
    req = request_for(offering())
    first = await gce.provision(req)
    fake_gce.request_ids.clear()  # GCE forgets requestIds after an hour or more
    again = await gce.provision(req)
    assert again.provider_id == first.provider_id
    assert len(fake_gce.instances) == 1


async def test_name_taken_by_another_token_is_invalid(gce: GceBackend, fake_gce: FakeGce) -> None:
    await gce.provision(request_for(offering(), token="t1"))
    name = only_instance(fake_gce)["name"]
    fake_gce.request_ids.clear()
    # Force the same name with a different token by patching the metadata hash.
    for item in only_instance(fake_gce)["metadata"]["items"]:
        if item["key"] == "provisioner-token":
            item["value"] = "someone-else"
    with pytest.raises(InvalidRequest, match=name):
        await gce.provision(request_for(offering(), token="t1"))


async def test_insert_waits_for_the_operation_to_be_done(fake_gce: FakeGce) -> None:
    fake_gce.operation_polls = 3
    backend = GceBackend(gce_config(fake_gce), BROKER)
    res = await backend.provision(request_for(offering()))
    assert fake_gce.server.calls["operation_get"] == 3
    assert res.state is ProviderState.RUNNING  # PROVISIONING until the operation is DONE
    await backend.close()


async def test_operation_never_done_times_out(fake_gce: FakeGce) -> None:
    fake_gce.operation_polls = 10_000
    backend = GceBackend(gce_config(fake_gce, operation_timeout_seconds=0.2), BROKER)
    with pytest.raises(BackendTimeout, match="not done"):
        await backend.provision(request_for(offering()))
    await backend.close()


async def test_list_walks_every_page_and_keeps_only_this_broker(fake_gce: FakeGce) -> None:
    backend = GceBackend(gce_config(fake_gce, page_size=2), BROKER)
    for i in range(5):
        await backend.provision(request_for(offering(), resource_id=f"r{i}"))
    await backend.provision(request_for(offering(zone="europe-west4-b"), resource_id="r-eu"))
    fake_gce.add_foreign_instance(ZONE, "someone-elses", {TAG_BROKER: "other"})
    fake_gce.add_foreign_instance(ZONE, "unlabelled", {})
    found = await backend.list_resources()
    assert sorted(r.resource_id or "" for r in found) == ["r-eu", "r0", "r1", "r2", "r3", "r4"]
    assert fake_gce.server.calls["aggregated_list"] == 3  # 6 matches, 2 per page
    assert {r.provider_id.split("/")[0] for r in found} == {ZONE, "europe-west4-b"}

    fake_gce.server.calls.clear()
    small_pages = GceBackend(gce_config(fake_gce, page_size=1), BROKER)
    assert len(await small_pages.list_resources()) == 6
    assert fake_gce.server.calls["aggregated_list"] == 6
    await backend.close()
    await small_pages.close()


async def test_list_ignores_another_broker_whose_label_sanitises_the_same(
    gce: GceBackend, fake_gce: FakeGce
) -> None:
    await gce.provision(request_for(offering()))
    twin = GceBackend(gce_config(fake_gce), "BROKER-test-1")  # same label value, different broker
    assert label_value("BROKER-test-1") == label_value(BROKER)
    assert await twin.list_resources() == []
    assert len(await gce.list_resources()) == 1
    await twin.close()


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("PROVISIONING", ProviderState.PENDING),
        ("STAGING", ProviderState.PENDING),
        ("RUNNING", ProviderState.RUNNING),
        ("STOPPING", ProviderState.STOPPING),
        ("SUSPENDED", ProviderState.STOPPING),
        ("TERMINATED", ProviderState.TERMINATED),
    ],
)
async def test_list_maps_gce_statuses(
    gce: GceBackend, fake_gce: FakeGce, status: str, state: ProviderState
) -> None:
    res = await gce.provision(request_for(offering()))
    fake_gce.set_status(ZONE, res.provider_id.split("/")[1], status)
    [listed] = await gce.list_resources()
    assert listed.state is state
    assert not listed.interruption_notice  # a standard VM is never preempted


async def test_spot_vm_terminated_by_gce_is_reported_preempted(gce: GceBackend, fake_gce: FakeGce) -> None:
    spot = await gce.provision(request_for(offering(market=Market.SPOT), resource_id="spot"))
    fake_gce.set_status(ZONE, spot.provider_id.split("/")[1], "TERMINATED")
    [listed] = await gce.list_resources()
    assert listed.state is ProviderState.TERMINATED
    assert listed.interruption_notice and listed.detail == "preempted"


async def test_spot_vm_we_release_is_not_reported_preempted(fake_gce: FakeGce) -> None:
    backend = GceBackend(gce_config(fake_gce, operation_timeout_seconds=0.1), BROKER)
    spot = await backend.provision(request_for(offering(market=Market.SPOT), resource_id="spot"))
    fake_gce.operation_polls = 1_000  # the delete stays in flight: the VM is STOPPING
    with pytest.raises(BackendTimeout):
        await backend.release(spot.provider_id)
    [listed] = await backend.list_resources()
    assert listed.state is ProviderState.STOPPING
    assert not listed.interruption_notice
    await backend.close()


async def test_release_awaits_delete_and_twice_is_fine(fake_gce: FakeGce) -> None:
    backend = GceBackend(gce_config(fake_gce), BROKER)
    res = await backend.provision(request_for(offering()))
    fake_gce.operation_polls = 2
    await backend.release(res.provider_id)
    assert not fake_gce.instances  # deleted only when the operation is DONE
    await backend.release(res.provider_id)
    assert await backend.list_resources() == []
    await backend.close()


async def test_release_rejects_a_provider_id_without_zone(gce: GceBackend) -> None:
    with pytest.raises(InvalidRequest, match="provider_id"):
        await gce.release("just-a-name")


async def test_throttled_insert_is_retried_then_succeeds(gce: GceBackend, fake_gce: FakeGce) -> None:
    fake_gce.fail("insert", 429, "rateLimitExceeded", times=2)
    res = await gce.provision(request_for(offering()))
    assert res.state is ProviderState.RUNNING
    assert fake_gce.server.calls["insert"] == 3


async def test_throttling_that_persists_raises_throttled(gce: GceBackend, fake_gce: FakeGce) -> None:
    fake_gce.fail("aggregated_list", 403, "rateLimitExceeded", "Rate Limit Exceeded", times=99)
    with pytest.raises(Throttled, match="rateLimitExceeded"):
        await gce.list_resources()
    assert fake_gce.server.calls["aggregated_list"] == 3  # max_attempts


@pytest.mark.parametrize(
    ("status", "reason", "error"),
    [
        (403, "quotaExceeded", QuotaExceeded),
        (403, "forbidden", AuthFailed),
        (401, "required", AuthFailed),
        (400, "invalid", InvalidRequest),
        (404, "notFound", InvalidRequest),
        (429, "RESOURCE_EXHAUSTED", Throttled),
    ],
)
async def test_http_errors_map_to_typed_errors(
    gce: GceBackend, fake_gce: FakeGce, status: int, reason: str, error: type[BackendError]
) -> None:
    fake_gce.fail("insert", status, reason, times=99)
    with pytest.raises(error) as info:
        await gce.provision(request_for(offering()))
    assert info.value.offering_id == "gce:us-central1-a:n2-standard-4:on_demand"
    assert not fake_gce.instances


@pytest.mark.parametrize(
    ("code", "http_status", "error"),
    [
        ("ZONE_RESOURCE_POOL_EXHAUSTED", 503, CapacityUnavailable),
        ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", 503, CapacityUnavailable),
        ("QUOTA_EXCEEDED", 403, QuotaExceeded),
    ],
)
async def test_operation_errors_map_to_typed_errors(
    fake_gce: FakeGce, code: str, http_status: int, error: type[BackendError]
) -> None:
    fake_gce.operation_polls = 2
    backend = GceBackend(gce_config(fake_gce), BROKER)
    fake_gce.fail_operation(code, f"The zone does not have enough resources ({code})", http_status)
    with pytest.raises(error, match=code):
        await backend.provision(request_for(offering()))
    assert not fake_gce.instances  # the failed insert left nothing behind
    await backend.close()


async def test_rejected_token_is_auth_failed_and_never_in_the_message(fake_gce: FakeGce) -> None:
    fake_gce.required_token = "ya29.the-right-one"
    secret = "ya29.WRONG-SECRET-TOKEN"
    backend = GceBackend(
        gce_config(fake_gce, anonymous=False), BROKER, credentials=TokenCredentials(token=secret)
    )
    with pytest.raises(AuthFailed) as info:
        await backend.provision(request_for(offering()))
    assert "credentials rejected" in str(info.value)
    assert "WRONG-SECRET" not in str(info.value)
    assert all("WRONG-SECRET" not in str(arg) for arg in info.value.args)
    ok = GceBackend(
        gce_config(fake_gce, anonymous=False),
        BROKER,
        credentials=TokenCredentials(token="ya29.the-right-one"),
    )
    assert (await ok.provision(request_for(offering()))).state is ProviderState.RUNNING
    await backend.close()
    await ok.close()


def service_account_file(path: Path, token_uri: str) -> tuple[Path, str, str]:
    """A real service-account key file (fresh RSA key); returns (file, private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": private,
        "client_email": SA_EMAIL,
        "client_id": "1",
        "token_uri": token_uri,
    }
    file = path / "sa.json"
    file.write_text(json.dumps(info))
    return file, private, public


SA_EMAIL = "broker@p.iam.gserviceaccount.com"


async def test_service_account_file_signs_requests_and_provisions(fake_gce: FakeGce, tmp_path: Path) -> None:
    file, _private, public = service_account_file(tmp_path, f"{fake_gce.url}/token")
    fake_gce.service_account_keys[SA_EMAIL] = public
    fake_gce.oauth_token = "ya29.granted-to-the-service-account"
    backend = GceBackend(gce_config(fake_gce, anonymous=False, credentials_file=file), BROKER)
    assert (await backend.provision(request_for(offering()))).state is ProviderState.RUNNING
    assert fake_gce.authorizations and all(a.startswith("Bearer ") for a in fake_gce.authorizations)
    await backend.close()


async def test_service_account_refused_is_auth_failed_without_key_or_token(
    fake_gce: FakeGce, tmp_path: Path
) -> None:
    file, private, _public = service_account_file(tmp_path, f"{fake_gce.url}/token")
    (tmp_path / "other").mkdir()
    _other_file, _other_private, other_public = service_account_file(
        tmp_path / "other", f"{fake_gce.url}/token"
    )
    fake_gce.service_account_keys[SA_EMAIL] = other_public  # the API knows another key: ours is refused
    backend = GceBackend(gce_config(fake_gce, anonymous=False, credentials_file=file), BROKER)
    with pytest.raises(AuthFailed) as info:
        await backend.list_resources()
    message = str(info.value)
    assert private.splitlines()[1] not in message and "PRIVATE KEY" not in message
    sent = [a.removeprefix("Bearer ") for a in fake_gce.authorizations]
    assert sent and all(token not in message for token in sent)
    await backend.close()


def test_missing_service_account_file_is_auth_failed_naming_the_file(tmp_path: Path) -> None:
    config = GceConfig(project="p", zones=["z"], credentials_file=tmp_path / "absent.json")
    with pytest.raises(AuthFailed, match=r"absent\.json"):
        GceBackend(config, BROKER)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()


async def test_unanswered_call_is_backend_timeout(fake_gce: FakeGce, silent_port: int) -> None:
    config = gce_config(
        fake_gce, api_endpoint=f"http://127.0.0.1:{silent_port}", request_timeout_seconds=0.2, max_attempts=2
    )
    backend = GceBackend(config, BROKER)
    with pytest.raises(BackendTimeout, match="timed out"):
        await backend.list_resources()
    await backend.close()


async def test_offerings_come_from_the_catalog_for_configured_zones(fake_gce: FakeGce) -> None:
    catalog = [offering(), offering(zone="asia-east1-a"), offering("t2a-standard-4", arch=Arch.ARM64)]
    backend = GceBackend(gce_config(fake_gce), BROKER, catalog=catalog)
    assert [o.instance_type for o in await backend.offerings()] == ["n2-standard-4", "t2a-standard-4"]
    await backend.close()


def test_config_rejects_unknown_keys_and_anonymous_without_endpoint() -> None:
    with pytest.raises(ValidationError, match="zone_list"):
        GceConfig.model_validate({"project": "p", "zones": ["z"], "zone_list": ["z"]})
    with pytest.raises(ValidationError, match="anonymous"):
        GceConfig(project="p", zones=["z"], anonymous=True)


LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@given(st.text(max_size=200))
def test_any_tag_becomes_a_valid_gce_label(text: str) -> None:
    assert LABEL_VALUE_RE.match(label_value(text))
    assert label_value(label_value(text)) == label_value(text)
    if label_key(text):
        assert LABEL_KEY_RE.match(label_key(text))


@given(st.text(max_size=200), st.text(min_size=1, max_size=100))
def test_instance_names_are_valid_and_stable(resource_id: str, token: str) -> None:
    name = instance_name_for("prov", resource_id, token)
    assert NAME_RE.match(name) and len(name) <= 63
    assert name == instance_name_for("prov", resource_id, token)

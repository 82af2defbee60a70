"""Fixtures for the EC2 backend: a real moto_server over HTTP, reset between tests, and a catalog."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from backends.aws import AwsBackend
from backends.aws_config import AwsConfig, AwsRegionConfig, ImageChoice
from provisioner.domain import Arch, Market, Offering
from tests.aws.faultproxy import FaultProxy
from tests.aws.moto_indexed import AMIS, start_moto
from tests.services import free_port, port_open, service_missing

REGION = "us-east-1"
BROKER = "broker-test"
# Distinctive fake credentials: tests grep errors and logs for them.
KEY_ID = "AKIAZZTESTKEY0000042"
SECRET = "s3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tXyZ0"


def moto_client(service: str, endpoint: str) -> Any:
    """A boto3 client of `service` on moto with the test credentials."""
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )


def ec2_client(endpoint: str) -> Any:
    """What a test reads EC2's own view with."""
    return moto_client("ec2", endpoint)


def aws_backends_table(endpoint: str, amis: Mapping[str, str], credentials: Path, **extra: str) -> str:
    """The backends file's [aws] table on moto (the test profile, one region with its AMIs); `extra` keys
    are written as they are given (TOML values)."""
    images = ", ".join(f'{k} = "{v}"' for k, v in amis.items())
    more = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return f"""
[aws]
kind = "aws"
profile = "broker"
credentials_file = "{credentials}"
endpoint_url = "{endpoint}"
{more}regions = [{{ region = "{REGION}", images = {{ {images} }} }}]
"""


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto_server subprocess on a free port on 127.0.0.1 for the whole session."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        service_missing("moto_server", "pip install 'moto[server]>=5'")
    port = free_port()
    try:
        proc = start_moto(port)
    except OSError as exc:
        service_missing("moto_server", f"could not start it: {exc}")
        raise
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if not port_open("127.0.0.1", port):
        proc.kill()
        service_missing("moto_server", f"it did not listen on 127.0.0.1:{port} within 30 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def moto(moto_server: str) -> str:
    """moto's endpoint with all state cleared first."""
    httpx.post(f"{moto_server}/moto-api/reset", timeout=30).raise_for_status()
    return moto_server


@pytest.fixture(scope="session")
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aws") / "credentials"
    path.write_text(f"[broker]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    return path


@pytest.fixture(scope="session")
def amis(moto_server: str) -> dict[str, str]:
    """The AMI ids per architecture, checked to exist in moto with the expected architecture."""
    ec2 = ec2_client(moto_server)
    images = {i["ImageId"]: i for i in ec2.describe_images(ImageIds=list(AMIS.values()))["Images"]}
    for key, ami in AMIS.items():
        assert images[ami]["Architecture"] == key.removeprefix("gpu_"), key
    return dict(AMIS)


def offering(instance_type: str, market: Market = Market.ON_DEMAND, **kw: object) -> Offering:
    """Real us-east-1 shapes and on-demand prices (Karpenter's generated price table, 2026-07-20)."""
    shapes: dict[str, tuple[int, float, Arch, str, Decimal, int, str | None]] = {
        "m6i.large": (2, 8.0, Arch.X86_64, "aws:m6i", Decimal("0.096"), 0, None),
        "c6i.large": (2, 4.0, Arch.X86_64, "aws:c6i", Decimal("0.085"), 0, None),
        "m7g.large": (2, 8.0, Arch.ARM64, "aws:m7g", Decimal("0.0816"), 0, None),
        "g5.xlarge": (4, 16.0, Arch.X86_64, "aws:g5", Decimal("1.006"), 1, "a10g"),
    }
    cores, mem, arch, family, price, gpus, gpu_model = shapes[instance_type]
    zone = kw.pop("zone", None)
    where = zone or REGION
    fields: dict[str, object] = {
        "id": f"aws:{where}:{instance_type}:{market.value}",
        "backend": "aws",
        "provider": "aws",
        "region": REGION,
        "zone": zone,
        "instance_type": instance_type,
        "family": family,
        "market": market,
        "cores": cores,
        "memory_gb": mem,
        "arch": arch,
        "price_per_hour": price
        if market is Market.ON_DEMAND
        else (price * Decimal("0.4")).quantize(Decimal("0.0001")),
        "hs23_per_core": 15.0,
        "gpu_count": gpus,
        "gpu_model": gpu_model,
    }
    fields.update(kw)
    return Offering(**fields)  # type: ignore[arg-type]


CATALOG = [
    offering("m6i.large"),
    offering("m6i.large", Market.SPOT),
    offering("m6i.large", Market.SPOT, zone="us-east-1b"),
    offering("c6i.large"),
    offering("m7g.large"),
    offering("m7g.large", Market.SPOT),
    offering("g5.xlarge"),
]


@pytest.fixture
def make_config(amis: dict[str, str], credentials_file: Path) -> Callable[..., AwsConfig]:
    def make(endpoint: str, **kw: object) -> AwsConfig:
        base: dict[str, object] = {
            "broker_id": BROKER,
            "regions": [AwsRegionConfig(region=REGION, images=ImageChoice(**amis))],
            "profile": "broker",
            "credentials_file": credentials_file,
            "endpoint_url": endpoint,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
        }
        base.update(kw)
        return AwsConfig(**base)

    return make


@pytest.fixture
async def backend(moto: str, make_config: Callable[..., AwsConfig]) -> AsyncIterator[AwsBackend]:
    b = AwsBackend(make_config(moto), CATALOG)
    yield b
    await b.close()


# The EC2 API through the fault proxy: each test appends the faults it wants to `proxy.faults`.
@pytest.fixture
def proxy(moto: str) -> Iterator[FaultProxy]:
    p = FaultProxy(upstream=moto).start()
    yield p
    p.stop()


@pytest.fixture
def via_proxy(proxy: FaultProxy, make_config: Callable[..., AwsConfig]) -> Callable[..., AwsBackend]:
    def make(**kw: object) -> AwsBackend:
        return AwsBackend(make_config(proxy.url, **kw), CATALOG)

    return make

"""Fixtures for the tests that need the project's Slurm test cluster (scripts/slurm-cluster.sh start)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backends.slurm.client import SlurmClient
from backends.slurm.commands import CommandsClient
from backends.slurm.pyslurm_client import PyslurmClient, PyslurmUnavailable
from backends.slurm.rest import RestClient
from tests.services import port_open, service_missing

CLUSTER_DIR = Path(os.environ.get("PROVISIONER_SLURM_DIR", "/tmp/provisioner-slurm"))
SLURM_CONF = CLUSTER_DIR / "etc" / "slurm.conf"
RESTD_URL = os.environ.get("SLURMRESTD_URL", "http://127.0.0.1:6820")
NODE = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=False).stdout.strip()
HOW = "run scripts/slurm-cluster.sh start"


def scontrol_up() -> bool:
    try:
        out = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=10, check=False,
            env={**os.environ, "SLURM_CONF": str(SLURM_CONF)},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in out.stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """The running test cluster's base directory; skip (laptop) or fail (CI) when it is not up."""
    if not SLURM_CONF.exists() or not scontrol_up():
        service_missing("Slurm test cluster", HOW)
    host, port = RESTD_URL.rsplit("//", 1)[1].split(":")
    if not port_open(host, int(port)):
        service_missing("slurmrestd of the Slurm test cluster", HOW)
    os.environ["SLURM_CONF"] = str(SLURM_CONF)
    os.environ.pop("SLURM_JWT", None)
    return CLUSTER_DIR


@pytest.fixture(scope="session")
def slurmdbd(slurm_cluster: Path) -> bool:
    """Whether the cluster runs with slurmdbd (the default) or without (WITH_SLURMDBD=0: jobcomp only)."""
    out = subprocess.run(
        ["sacctmgr", "-n", "show", "cluster"], capture_output=True, text=True, timeout=20, check=False
    )
    return out.returncode == 0


def make_client(kind: str) -> SlurmClient:
    if kind == "commands":
        return CommandsClient(slurm_conf=str(SLURM_CONF))
    if kind == "rest":
        return RestClient(RESTD_URL)
    loaded = sys.modules.get("pyslurm")
    if loaded is not None and getattr(loaded, "__file__", None) is None:
        pytest.fail(
            "a stub pyslurm was left in sys.modules by an earlier test: it would stand in for the real one"
        )
    try:
        return PyslurmClient.open(slurm_conf=str(SLURM_CONF))
    except PyslurmUnavailable as err:
        # not a missing service: PyPI has no pyslurm for Slurm 22.05 (25.11 and older releases only), and
        # the project builds no third-party source it would have to carry itself
        pytest.skip(f"pyslurm client: {err}")


@pytest.fixture(params=["commands", "rest", "pyslurm"])
async def client(request: pytest.FixtureRequest, slurm_cluster: Path) -> AsyncIterator[SlurmClient]:
    """The same contract runs against every client that can run here."""
    c = make_client(str(request.param))
    yield c
    await c.close()


@pytest.fixture
async def commands(slurm_cluster: Path) -> AsyncIterator[CommandsClient]:
    c = CommandsClient(slurm_conf=str(SLURM_CONF))
    yield c
    await c.close()


@pytest.fixture
def tag() -> str:
    """A unique tag for this test's jobs, resources and tokens."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def cleanup(commands: CommandsClient) -> AsyncIterator[list[str]]:
    """Job ids to cancel after the test, whatever happened."""
    ids: list[str] = []
    yield ids
    await asyncio.gather(*(commands.cancel(i) for i in ids))


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 30.0,
    interval: float = 0.25,
    what: str = "condition",
) -> None:
    """Poll until `check` holds; fail with `what` after `timeout` seconds (a deadline, not a benchmark)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def node_free(client: SlurmClient, node: str = NODE) -> bool:
    for n in await client.nodes():
        if n.name == node:
            return n.alloc_cpus == 0 and n.state == "idle"
    return False


def now() -> datetime:
    return datetime.now(UTC)

"""SlurmAllocationBackend on the real cluster: pilots provisioned, listed, released, and the allocation balance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from backends.base import Backend, ProviderState, ProvisionRequest
from backends.slurm.allocation import SlurmAllocationBackend
from backends.slurm.client import AccountingRecord, AccountingUnavailable, JobState, SlurmClient
from backends.slurm.commands import CommandsClient
from backends.slurm.pilot import provider_state
from provisioner.domain import AllocationInfo, Arch, Market, Offering
from tests.slurm.conftest import SLURM_CONF, eventually, make_client, now

pytestmark = pytest.mark.slurm


def allocation_offering(
    account: str = "atlas", *, cores: int = 8, starts: datetime | None = None
) -> Offering:
    start = starts or now() - timedelta(days=1)
    return Offering(
        id=f"slurm:ci:debug-{account}-{cores}:allocation",
        backend="ci-hpc",
        provider="slurm",
        region="debug",
        instance_type=f"node{cores}",
        family="slurm:ci",
        market=Market.ALLOCATION,
        cores=cores,
        memory_gb=16,
        arch=Arch.X86_64,
        price_per_hour=Decimal(0),
        hs23_per_core=10.0,
        max_walltime_hours=2.0,
        allocation=AllocationInfo(
            name=f"{account}-2026",
            account=account,
            partition="debug",
            qos=None,
            node_hours_granted=1000,
            node_hours_used=0,
            starts=start,
            ends=start + timedelta(days=365),
        ),
    )


def request(offering: Offering, tag: str, broker: str, *, n: int = 0, hours: float = 0.5) -> ProvisionRequest:
    return ProvisionRequest(
        resource_id=f"r{n}-{tag}",
        offering=offering,
        idempotency_token=f"tok{n}-{tag}",
        broker_id=broker,
        group_id="g1",
        experiment=offering.allocation.account if offering.allocation else None,
        walltime_hours=hours,
    )


@pytest.fixture(params=["commands", "rest"])
async def slurm(request: pytest.FixtureRequest, slurm_cluster: Path) -> AsyncIterator[SlurmClient]:
    c = make_client(str(request.param))
    yield c
    await c.close()


def backend(
    client: SlurmClient, offerings: list[Offering], broker: str, **kw: object
) -> SlurmAllocationBackend:
    return SlurmAllocationBackend("ci-hpc", client, offerings, broker_id=broker, **kw)  # type: ignore[arg-type]


async def test_pilot_runs_and_is_listed_with_tags_and_walltime_left(
    slurm: SlurmClient, tag: str, cleanup: list[str]
) -> None:
    offering = allocation_offering(cores=2)
    hpc = backend(slurm, [offering], f"b-{tag}", core_slices={offering.id})
    assert isinstance(hpc, Backend)
    unit = await hpc.provision(request(offering, tag, f"b-{tag}", hours=0.5))
    cleanup.append(unit.provider_id)
    assert unit.resource_id == f"r0-{tag}" and unit.offering_id == offering.id

    async def running() -> bool:
        return any(
            r.provider_id == unit.provider_id and r.state is ProviderState.RUNNING
            for r in await hpc.list_resources()
        )

    await eventually(running, what="the pilot to run")
    [pilot] = await hpc.pilots()
    assert pilot.job.cpus == 2 and pilot.job.account == "atlas" and pilot.job.partition == "debug"
    assert pilot.walltime_left_hours is not None and 0.45 < pilot.walltime_left_hours <= 0.5
    detail = dict(part.split("=", 1) for part in pilot.resource.detail.split("; ") if "=" in part)
    assert float(detail["walltime_left_hours"]) == pytest.approx(pilot.walltime_left_hours, abs=0.001)
    assert pilot.resource.tags["provisioner-broker"] == f"b-{tag}"
    assert pilot.resource.tags["provisioner-group"] == "g1"
    assert "token" not in pilot.resource.tags
    assert pilot.resource.busy is None  # Slurm cannot tell whether the payload has work; heartbeats do


async def test_provision_retried_with_the_same_token_returns_the_same_pilot(
    slurm: SlurmClient, tag: str, cleanup: list[str]
) -> None:
    offering = allocation_offering()
    hpc = backend(slurm, [offering], f"b-{tag}")
    first = await hpc.provision(request(offering, tag, f"b-{tag}"))
    second = await hpc.provision(request(offering, tag, f"b-{tag}"))
    cleanup += [first.provider_id, second.provider_id]
    assert first.provider_id == second.provider_id
    assert [r.provider_id for r in await hpc.list_resources()] == [first.provider_id]


async def test_whole_node_pilot_is_exclusive_and_release_terminates_it(
    slurm: SlurmClient, tag: str, cleanup: list[str]
) -> None:
    offering = allocation_offering()
    hpc = backend(slurm, [offering], f"b-{tag}")
    unit = await hpc.provision(request(offering, tag, f"b-{tag}"))
    cleanup.append(unit.provider_id)

    async def state_is(state: ProviderState) -> bool:
        return any(r.provider_id == unit.provider_id and r.state is state for r in await hpc.list_resources())

    await eventually(lambda: state_is(ProviderState.RUNNING), what="the pilot to run")
    [pilot] = await hpc.pilots()
    assert pilot.job.cpus == 8  # --exclusive: the whole node
    await hpc.release(unit.provider_id)
    await eventually(lambda: state_is(ProviderState.TERMINATED), what="the pilot to end")
    await hpc.release(unit.provider_id)  # twice: no error


async def test_other_brokers_pilots_are_not_listed(slurm: SlurmClient, tag: str, cleanup: list[str]) -> None:
    offering = allocation_offering(cores=1)
    mine = backend(slurm, [offering], f"mine-{tag}", core_slices={offering.id})
    theirs = backend(slurm, [offering], f"theirs-{tag}", core_slices={offering.id})
    unit = await theirs.provision(request(offering, tag, f"theirs-{tag}"))
    cleanup.append(unit.provider_id)
    assert await mine.list_resources() == []


def test_every_slurm_state_maps_to_a_provider_state() -> None:
    assert provider_state(JobState.PENDING) is ProviderState.PENDING
    assert provider_state(JobState.CONFIGURING) is ProviderState.PENDING
    assert provider_state(JobState.COMPLETING) is ProviderState.STOPPING
    assert provider_state(JobState.PREEMPTED) is ProviderState.TERMINATED
    assert provider_state(JobState.CANCELLED) is ProviderState.TERMINATED
    for failed in (JobState.FAILED, JobState.TIMEOUT, JobState.NODE_FAIL):
        assert provider_state(failed) is ProviderState.FAILED
    for state in JobState:
        provider_state(state)  # no KeyError for any state
    assert JobState.parse("CANCELLED by 0") is JobState.CANCELLED
    assert JobState.parse("OUT_OF_ME+") is JobState.OUT_OF_MEMORY


async def test_allocation_balance_counts_node_hours_from_sacct(
    commands: CommandsClient, tag: str, cleanup: list[str], slurmdbd: bool
) -> None:
    if not slurmdbd:
        pytest.skip("cluster started with WITH_SLURMDBD=0: no sacct (the own-records test covers this mode)")
    start = now() - timedelta(seconds=2)
    offering = allocation_offering("dune", starts=start)
    hpc = backend(commands, [offering], f"b-{tag}")
    unit = await hpc.provision(request(offering, tag, f"b-{tag}"))
    cleanup.append(unit.provider_id)

    await eventually(lambda: _ran_for(hpc, seconds=2), what="the pilot to run 2 s")
    await hpc.release(unit.provider_id)

    async def in_sacct() -> bool:
        records = await commands.accounting(since=start, accounts=["dune"])
        return any(r.job_id == unit.provider_id and r.state.finished for r in records)

    await eventually(in_sacct, timeout=60, what="the pilot in slurmdbd")
    records = await commands.accounting(since=start, accounts=["dune"])
    expected = sum(r.elapsed_seconds * r.nodes for r in records if r.partition == "debug") / 3600
    used = await hpc.allocation_balance(offering)
    assert used == pytest.approx(expected) and used > 0
    [listed] = await hpc.offerings()
    assert listed.allocation is not None and listed.allocation.node_hours_used == pytest.approx(used)


class NoSlurmdbd(CommandsClient):
    """The real commands client on a site without slurmdbd: sacct has nothing to say."""

    async def accounting(
        self, *, since: datetime, accounts: Collection[str] | None = None
    ) -> list[AccountingRecord]:
        raise AccountingUnavailable("slurm", "sacct: Slurm accounting storage is disabled")


async def test_allocation_balance_without_slurmdbd_uses_the_pilots_it_saw(
    slurm_cluster: Path, tag: str, cleanup: list[str]
) -> None:
    client = NoSlurmdbd(slurm_conf=str(SLURM_CONF))
    offering = allocation_offering("lsst", cores=1, starts=now() - timedelta(seconds=2))
    hpc = backend(client, [offering], f"b-{tag}", core_slices={offering.id})
    unit = await hpc.provision(request(offering, tag, f"b-{tag}"))
    cleanup.append(unit.provider_id)

    await eventually(lambda: _ran_for(hpc, seconds=2), what="the pilot to run 2 s")
    await hpc.release(unit.provider_id)
    await eventually(lambda: _finished(hpc), what="the pilot to end")
    used = await hpc.allocation_balance(offering)
    [pilot] = await hpc.pilots()
    assert pilot.job.start_time is not None and pilot.job.end_time is not None
    assert used == pytest.approx((pilot.job.end_time - pilot.job.start_time).total_seconds() / 3600)
    assert used >= 2 / 3600


async def _finished(hpc: SlurmAllocationBackend) -> bool:
    return all(p.job.state.finished for p in await hpc.pilots())


async def _ran_for(hpc: SlurmAllocationBackend, *, seconds: float) -> bool:
    return any(
        p.job.state is JobState.RUNNING
        and p.job.start_time is not None
        and now() - p.job.start_time > timedelta(seconds=seconds)
        for p in await hpc.pilots()
    )

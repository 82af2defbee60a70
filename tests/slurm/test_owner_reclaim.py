"""Backfill gives nodes back to their owners: which units an owner's job evacuates, what is listed as an
owner reclaim, and that nothing is offered on a node the owner runs on or waits for.

A small in-memory Slurm stands in for the cluster (the real one: test_backfill, test_pilots_e2e)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from backends.base import TAG_BROKER
from backends.slurm.backfill import SlurmBackfillBackend
from backends.slurm.client import JobState, SlurmJob, SlurmNode, encode_comment
from backends.slurm.pilot import TAG_KIND
from provisioner.domain import Arch, Market, Offering

BROKER = "b-1"
OFFERING = Offering(
    id="bf:scavenger:slot2:backfill", backend="bf", provider="backfill", region="scavenger", instance_type="slot2",
    family="slurm:bf", market=Market.BACKFILL, cores=2, memory_gb=4, arch=Arch.X86_64,
    price_per_hour=Decimal(0), hs23_per_core=10.0,
)  # fmt: skip


class FakeSlurm:
    """jobs(), nodes() and cancel() over a list the test edits."""

    def __init__(self, jobs: list[SlurmJob], hosts: list[str]) -> None:
        self._jobs = jobs
        self._hosts = hosts
        self.cancelled: list[str] = []

    async def jobs(self) -> list[SlurmJob]:
        return list(self._jobs)

    async def nodes(self) -> list[SlurmNode]:
        """8-core nodes in the scavenger and owner partitions, with the cores running jobs hold."""
        alloc = dict.fromkeys(self._hosts, 0)
        for j in self._jobs:
            if j.state is JobState.RUNNING:
                alloc[j.node_list] += j.cpus
        return [
            SlurmNode(
                name=h,
                state="mixed" if a else "idle",
                flags=frozenset(),
                cpus=8,
                alloc_cpus=a,
                memory_mb=16000,
                partitions=("scavenger", "owner"),
            )
            for h, a in alloc.items()
        ]

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self._jobs[:] = [
            SlurmJob(**{**_fields(j), "state": JobState.CANCELLED}) if j.job_id == job_id else j
            for j in self._jobs
        ]

    async def close(self) -> None:
        return None


def _fields(job: SlurmJob) -> dict[str, Any]:
    return {f: getattr(job, f) for f in job.__slots__}  # type: ignore[attr-defined]


def ours(job_id: str, host: str) -> SlurmJob:
    return SlurmJob(
        job_id=job_id, name=f"prv.backfill.r{job_id}", state=JobState.RUNNING, partition="scavenger",
        comment=encode_comment({TAG_BROKER: BROKER, TAG_KIND: "backfill"}), cpus=2, node_list=host,
        start_time=datetime(2026, 11, 30, tzinfo=UTC), time_limit_minutes=60,
    )  # fmt: skip


def owner(job_id: str, state: JobState, *, host: str = "", reason: str | None = "Resources") -> SlurmJob:
    return SlurmJob(
        job_id=job_id, name="owner", state=state, partition="owner", cpus=8, node_list=host, reason=reason,
        priority=100,
    )  # fmt: skip


def pool(slurm: FakeSlurm) -> SlurmBackfillBackend:
    return SlurmBackfillBackend("bf", slurm, OFFERING, broker_id=BROKER)  # type: ignore[arg-type]


async def test_a_waiting_owner_job_evacuates_the_node_it_gets_soonest_with_fewest_units() -> None:
    jobs = [ours("1", "n1"), ours("2", "n1"), ours("3", "n2"), owner("9", JobState.PENDING)]
    bf = pool(FakeSlurm(jobs, ["n1", "n2"]))
    # the owner wants one whole node: n2 frees it by evacuating one unit, n1 would need two
    assert await bf.evacuate_for_owners() == ["3"]
    assert await bf.evacuate_for_owners() == []  # the choice holds once the unit has gone
    listed = {r.provider_id: r for r in await bf.list_resources()}
    assert listed["3"].interruption_notice and "owner reclaim" in listed["3"].detail
    assert not listed["1"].interruption_notice
    assert await bf.free_slots() == 2  # n1's 4 free cores only: n2 is the owner's


async def test_nothing_is_offered_on_a_node_the_owner_runs_on_and_no_evacuation_without_waiting_owners() -> (
    None
):
    slurm = FakeSlurm([owner("9", JobState.RUNNING, host="n1", reason=None)], ["n1", "n2"])
    bf = pool(slurm)
    assert await bf.evacuate_for_owners() == []
    assert await bf.free_slots() == 4  # n2's 8 cores; none on n1
    held = FakeSlurm([ours("1", "n1"), owner("9", JobState.PENDING, reason="JobHeldUser")], ["n1"])
    assert await pool(held).evacuate_for_owners() == []  # a held job waits for its owner, not for nodes
    assert held.cancelled == []


async def test_backfill_preempted_by_slurm_is_listed_as_an_owner_reclaim() -> None:
    preempted = SlurmJob(**{**_fields(ours("1", "n1")), "state": JobState.PREEMPTED})
    [listed] = await pool(FakeSlurm([preempted], ["n1"])).list_resources()
    assert listed.interruption_notice and "owner reclaim" in listed.detail

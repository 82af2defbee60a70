"""Finished pilot and backfill jobs as UsageRecords, from sacct (slurmdbd) and from the jobcomp log."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backends.base import ProvisionRequest
from backends.slurm.allocation import SlurmAllocationBackend
from backends.slurm.backfill import SlurmBackfillBackend
from backends.slurm.client import AccountingRecord, AccountingUnavailable, JobSpec, JobState
from backends.slurm.commands import CommandsClient
from backends.slurm.usage import collect_usage, parse_jobcomp_line, read_jobcomp, to_usage
from provisioner.domain import AllocationInfo, Arch, Market, Offering
from tests.slurm.conftest import SLURM_CONF, eventually, now

# real lines captured from the test cluster's jobcomp/filetxt log
JOBCOMP_RUN = (
    "JobId=2 UserId=root(0) GroupId=root(0) Name=prv.backfill.bf0-x JobState=CANCELLED Partition=scavenger "
    "TimeLimit=5 StartTime=2026-11-23T18:26:57 EndTime=2026-11-23T18:27:05 NodeList=vm NodeCnt=1 ProcCnt=1 "
    "WorkDir=/work/main ReservationName= Tres=cpu=1,mem=19284M,node=1,billing=1 Account=lsst QOS=normal WcKey= "
    "Cluster=ci SubmitTime=2026-11-23T18:26:57 EligibleTime=2026-11-23T18:26:57 DerivedExitCode=0:0 ExitCode=0:0 "
)
JOBCOMP_NEVER_RAN = (
    "JobId=1 UserId=root(0) GroupId=root(0) Name=holdjob JobState=CANCELLED Partition=debug TimeLimit=30 "
    "StartTime=2026-11-23T18:27:05 EndTime=2026-11-23T18:27:05 NodeList=(null) NodeCnt=0 ProcCnt=0 "
    "WorkDir=/work/main ReservationName= Tres=cpu=2,mem=1G,node=1,billing=2,gres/gpu=1 Account=atlas QOS=normal "
    "WcKey= Cluster=ci SubmitTime=2026-11-23T18:26:57 EligibleTime=unknown DerivedExitCode=0:0 ExitCode=0:0 "
)

SITE: dict[str, Any] = {"site": "CI-SITE", "submit_host": "ci-ctl.example.org", "backend": "ci-hpc"}


def test_jobcomp_line_gives_times_tres_and_account() -> None:
    record = parse_jobcomp_line(JOBCOMP_RUN)
    assert record is not None
    assert (record.job_id, record.state, record.account, record.partition) == (
        "2",
        JobState.CANCELLED,
        "lsst",
        "scavenger",
    )
    assert record.start_time == datetime(2026, 11, 23, 18, 26, 57, tzinfo=UTC)
    assert (record.elapsed_seconds, record.cpus, record.nodes, record.memory_mb) == (8, 1, 1, 19284)
    assert record.cpu_seconds is None and record.node_list == "vm"
    [usage] = to_usage([record], **SITE)
    assert (
        usage.record_key
        == f"CI-SITE:backfill:2-{int(datetime(2026, 11, 23, 18, 26, 57, tzinfo=UTC).timestamp())}"
    )
    assert (usage.kind, usage.experiment, usage.market, usage.resource_id, usage.status) == (
        "backfill", "lsst", "backfill", "bf0-x", "cancelled",
    )  # fmt: skip

    never = parse_jobcomp_line(JOBCOMP_NEVER_RAN)
    assert never is not None and never.start_time is None and never.gpus == 1
    assert to_usage([never], **SITE, only_ours=False) == []  # never ran: no usage
    assert parse_jobcomp_line("") is None and parse_jobcomp_line("garbage") is None


class NoSlurmdbd(CommandsClient):
    async def accounting(
        self, *, since: datetime, accounts: Collection[str] | None = None
    ) -> list[AccountingRecord]:
        raise AccountingUnavailable("slurm", "sacct: Slurm accounting storage is disabled")


@pytest.mark.slurm
async def test_finished_pilot_and_backfill_jobs_become_usage_from_sacct_and_jobcomp(
    commands: CommandsClient, slurm_cluster: Path, tag: str, cleanup: list[str], slurmdbd: bool
) -> None:
    since = now() - timedelta(seconds=2)
    alloc = Offering(
        id="slurm:ci:debug-2c:allocation", backend="ci-hpc", provider="slurm", region="debug", instance_type="slice2",
        family="slurm:ci", market=Market.ALLOCATION, cores=2, memory_gb=4, arch=Arch.X86_64,
        price_per_hour=Decimal(0), hs23_per_core=10.0,
        allocation=AllocationInfo(
            name="cms-2026", account="cms", partition="debug", qos=None, node_hours_granted=100, node_hours_used=0,
            starts=since, ends=since + timedelta(days=30),
        ),
    )  # fmt: skip
    bf = Offering(
        id="backfill:ci:scavenger-1c:backfill", backend="ci-backfill", provider="backfill", region="scavenger",
        instance_type="slot1", family="backfill:ci", market=Market.BACKFILL, cores=1, memory_gb=2, arch=Arch.X86_64,
        price_per_hour=Decimal(0), hs23_per_core=10.0,
    )  # fmt: skip
    broker = f"b-{tag}"
    hpc = SlurmAllocationBackend("ci-hpc", commands, [alloc], broker_id=broker, core_slices={alloc.id})
    pool = SlurmBackfillBackend("ci-backfill", commands, bf, broker_id=broker, account="cms")
    pilot = await hpc.provision(
        ProvisionRequest(
            resource_id=f"p-{tag}", offering=alloc, idempotency_token=f"pt-{tag}", broker_id=broker
        )
    )
    unit = await pool.provision(
        ProvisionRequest(resource_id=f"u-{tag}", offering=bf, idempotency_token=f"ut-{tag}", broker_id=broker)
    )
    foreign = await commands.submit(
        JobSpec(name=f"user.{tag}", script="#!/bin/bash\nsleep 1\n", partition="debug", time_limit_minutes=1,
                cores=1, account="cms")
    )  # fmt: skip
    ours = {pilot.provider_id, unit.provider_id}
    cleanup += [*ours, foreign]

    async def ran_two_seconds() -> bool:
        jobs = {j.job_id: j for j in await commands.jobs()}
        starts = [jobs[i].start_time if jobs[i].state is JobState.RUNNING else None for i in ours]
        return all(s is not None and now() - s > timedelta(seconds=2) for s in starts)

    await eventually(ran_two_seconds, what="pilot and backfill unit to run 2 s")
    await hpc.release(pilot.provider_id)
    await pool.release(unit.provider_id)

    log = slurm_cluster / "log" / "jobcomp.txt"

    async def all_in_jobcomp() -> bool:
        return ours | {foreign} <= {r.job_id for r in read_jobcomp(log, since=since)}

    await eventually(all_in_jobcomp, timeout=60, what="the jobs in the jobcomp log")
    # the collector: sacct with slurmdbd, the jobcomp log without
    if slurmdbd:

        async def all_in_sacct() -> bool:
            done = {r.job_id for r in await commands.accounting(since=since) if r.state.finished}
            return ours | {foreign} <= done

        await eventually(all_in_sacct, timeout=60, what="the jobs in slurmdbd")
    collected = await collect_usage(commands, since=since, jobcomp_path=log, **SITE)
    usage = {u.local_job_id: u for u in collected}
    assert foreign not in usage  # not ours
    p, u = usage[pilot.provider_id], usage[unit.provider_id]
    assert (p.kind, p.market, p.resource_id, p.cores, p.nodes, p.experiment) == (
        "pilot", "allocation", f"p-{tag}", 2, 1, "cms",
    )  # fmt: skip
    assert (u.kind, u.market, u.resource_id, u.cores) == ("backfill", "backfill", f"u-{tag}", 1)
    for rec in (p, u):
        assert rec.wall_seconds >= 2 and rec.status == "cancelled" and rec.site == "CI-SITE"
        assert rec.start_time >= since and rec.end_time is not None and rec.end_time >= rec.start_time
        assert rec.record_key.startswith(f"CI-SITE:{rec.kind}:{rec.local_job_id}-")
        assert rec.memory_kb is None or rec.memory_kb > 0

    # the jobcomp log describes the same jobs with the same keys (no CPU time there)
    from_log = {u.local_job_id: u for u in to_usage(read_jobcomp(log, since=since), **SITE)}
    for job_id in ours:
        assert from_log[job_id].record_key == usage[job_id].record_key
        assert from_log[job_id].wall_seconds == usage[job_id].wall_seconds
        assert from_log[job_id].cores == usage[job_id].cores and from_log[job_id].cpu_seconds is None  # unknown, not 0

    # a site without slurmdbd: the collector falls back to the jobcomp log, and says so without one
    fallback = await collect_usage(
        NoSlurmdbd(slurm_conf=str(SLURM_CONF)), since=since, jobcomp_path=log, **SITE
    )
    assert {r.record_key for r in fallback if r.local_job_id in ours} == {usage[i].record_key for i in ours}
    with pytest.raises(AccountingUnavailable):
        await collect_usage(NoSlurmdbd(slurm_conf=str(SLURM_CONF)), since=since, **SITE)

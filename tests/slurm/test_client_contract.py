"""The SlurmClient contract, run against every client available here (commands, REST, pyslurm)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backends.base import InvalidRequest
from backends.slurm.client import (
    AccountingUnavailable,
    JobSpec,
    JobState,
    SlurmClient,
    encode_comment,
    submit_once,
)
from tests.slurm.conftest import NODE, eventually, now

pytestmark = pytest.mark.slurm


def spec(tag: str, **kw: object) -> JobSpec:
    base: dict[str, object] = {
        "name": f"contract.{tag}",
        "script": "#!/bin/bash\nsleep 300\n",
        "partition": "debug",
        "time_limit_minutes": 5,
        "comment": encode_comment({"test": tag, "token": f"tok-{tag}"}),
        "account": "atlas",
        "cores": 1,
        "hold": True,
    }
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


async def test_submitted_held_job_is_listed_pending_with_reason_and_comment(
    client: SlurmClient, tag: str, cleanup: list[str]
) -> None:
    job_id = await client.submit(spec(tag, cores=2))
    cleanup.append(job_id)
    job = await client.job(job_id)
    assert job is not None
    assert job.state is JobState.PENDING
    assert job.reason == "JobHeldUser"
    assert job.comment == f"test={tag};token=tok-{tag}"
    assert job.name == f"contract.{tag}"
    assert (job.account, job.partition, job.cpus, job.time_limit_minutes) == ("atlas", "debug", 2, 5)
    assert job_id in {j.job_id for j in await client.jobs()}


async def test_pending_job_reports_gpus_memory_and_time_limit(
    client: SlurmClient, tag: str, cleanup: list[str]
) -> None:
    job_id = await client.submit(spec(tag, gpus=1, memory_mb=1024, time_limit_minutes=30))
    cleanup.append(job_id)
    job = await client.job(job_id)
    assert job is not None
    assert (job.gpus, job.memory_mb, job.time_limit_minutes) == (1, 1024, 30)


async def test_cancel_ends_job_and_is_safe_to_repeat(
    client: SlurmClient, tag: str, cleanup: list[str]
) -> None:
    job_id = await client.submit(spec(tag, hold=False, partition="scavenger"))
    cleanup.append(job_id)

    async def running() -> bool:
        job = await client.job(job_id)
        return job is not None and job.state is JobState.RUNNING

    await eventually(running, what=f"job {job_id} to run")
    await client.cancel(job_id)

    async def cancelled() -> bool:
        job = await client.job(job_id)
        return job is not None and job.state is JobState.CANCELLED

    await eventually(cancelled, what=f"job {job_id} to be cancelled")
    await client.cancel(job_id)  # already finished: no error
    await client.cancel("999999")  # never existed: no error


async def test_submit_once_returns_the_existing_job_for_the_same_token(
    client: SlurmClient, tag: str, cleanup: list[str]
) -> None:
    first = await submit_once(client, spec(tag), f"tok-{tag}")
    cleanup.append(first.job_id)
    second = await submit_once(client, spec(tag), f"tok-{tag}")
    cleanup.append(second.job_id)
    assert second.job_id == first.job_id
    assert [j.job_id for j in await client.jobs() if j.name == f"contract.{tag}"] == [first.job_id]


async def test_unknown_partition_is_an_invalid_request(client: SlurmClient, tag: str) -> None:
    with pytest.raises(InvalidRequest):
        await client.submit(spec(tag, partition="no-such-partition"))


async def test_nodes_report_shapes_gres_partitions_and_cloud_flags(client: SlurmClient) -> None:
    nodes = {n.name: n for n in await client.nodes()}
    real = nodes[NODE]
    assert (real.cpus, real.gpus, real.gpu_model) == (8, 2, "fake")
    assert {"debug", "owner", "scavenger"} <= set(real.partitions)
    assert "x86_64" in real.features and not real.cloud
    clouds = [n for n in nodes.values() if n.name.startswith("cloud")]
    assert clouds and all(n.cloud and n.cpus == 4 and "cloud" in n.partitions for n in clouds)


async def test_accounting_reports_a_finished_job_with_its_comment(
    client: SlurmClient, tag: str, cleanup: list[str], slurmdbd: bool
) -> None:
    since = now() - timedelta(seconds=5)
    if not slurmdbd:
        with pytest.raises(AccountingUnavailable):
            await client.accounting(since=since)
        return
    job_id = await client.submit(
        spec(tag, hold=False, partition="scavenger", account="cms", cores=2, script="#!/bin/bash\nsleep 1\n")
    )
    cleanup.append(job_id)

    async def recorded() -> bool:
        return any(r.job_id == job_id and r.state.finished for r in await client.accounting(since=since))

    await eventually(recorded, timeout=60, what=f"job {job_id} in slurmdbd")
    record = next(r for r in await client.accounting(since=since, accounts=["cms"]) if r.job_id == job_id)
    assert record.state is JobState.COMPLETED
    assert (record.account, record.partition, record.cpus, record.nodes) == ("cms", "scavenger", 2, 1)
    assert record.comment == f"test={tag};token=tok-{tag}"
    assert 1 <= record.elapsed_seconds <= 30
    assert record.start_time is not None and record.end_time is not None and record.start_time >= since
    assert record.node_list == NODE

"""The pyslurm client against a stub that follows pyslurm's documented API (pyslurm cannot be built here)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backends.slurm import pyslurm_client
from backends.slurm.client import JobSpec, JobState
from backends.slurm.pyslurm_client import PyslurmClient, PyslurmUnavailable, load_pyslurm, major_minor
from provisioner.sources import configured
from provisioner.sources.configured import SlurmQueueTable
from provisioner.sources.slurm import SlurmWorkloadSource
from tests.slurm import pyslurm_stub as stub

T0 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())


@pytest.fixture
def client() -> PyslurmClient:
    return PyslurmClient(stub.module())


@pytest.mark.parametrize(
    ("built", "site", "ok"),
    [
        ("24.5.1", "24.05.4", True),
        ("25.11.2", "25.11.0", True),
        ("24.11.0", "24.05.4", False),
        ("23.2.0", "23.02.7", True),
    ],
)
def test_version_check_reads_pyslurms_pep440_numbers_as_slurm_releases(
    built: str, site: str, ok: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", stub.module(built))
    if ok:
        assert load_pyslurm(site_version=site).__version__ == built
    else:
        with pytest.raises(PyslurmUnavailable, match="another Slurm release"):
            load_pyslurm(site_version=site)
    assert major_minor("slurm-wlm 22.05.8") == (22, 5) == major_minor("22.5.0")


def test_a_missing_pyslurm_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    with pytest.raises(PyslurmUnavailable, match="not importable"):
        load_pyslurm(site_version="22.05.8")


async def test_jobs_read_pyslurms_attribute_names_and_shapes(client: PyslurmClient) -> None:
    stub.QUEUE[7] = stub.Job(
        id=7, name="train", state="PENDING", state_reason="Resources", account="lsst", cpus=16, num_nodes=2,
        memory=64000, gpus={"gpu:a100": stub.GPU(8, "a100")}, gres_per_node={"gpu:a100": 4},
        constraints=["x86_64"], time_limit=90, submit_time=T0, resource_sharing="NO",
    )  # fmt: skip
    stub.QUEUE[8] = stub.Job(
        id=8, name="arr", array_id=8, array_tasks_waiting="0-9", array_tasks_parallel=3, state_reason="None"
    )
    jobs = {j.job_id: j for j in await client.jobs()}
    train = jobs["7"]
    assert (train.state, train.reason, train.cpus, train.nodes, train.memory_mb) == (
        JobState.PENDING, "Resources", 16, 2, 64000,
    )  # fmt: skip
    assert (train.gpus, train.gpu_model, train.gpus_per_node, train.features) == (8, "a100", 4, "x86_64")
    assert (
        train.exclusive
        and train.time_limit_minutes == 90
        and train.submit_time == datetime.fromtimestamp(T0, UTC)
    )
    arr = jobs["8"]
    assert (arr.reason, arr.array_job_id, arr.array_tasks, arr.array_max_tasks) == (None, "8", "0-9", 3)
    # and the queue source sizes them like any other client's jobs
    demand = await SlurmWorkloadSource(client, gpu_models=["A100"]).pending()
    assert sum(1 for p in demand if p.job_id.startswith("8[")) == 3
    assert {p.gpu_model for p in demand if p.job_id.startswith("7")} == {"A100"}


async def test_nodes_split_the_complete_state_into_base_and_flags(client: PyslurmClient) -> None:
    stub.NODES["cloud1"] = stub.Node(
        "cloud1", state="IDLE+CLOUD+POWERED_DOWN", total_cpus=4, real_memory=2000,
        configured_gres={"gpu:l4": 1}, active_features=["cloud", "x86_64"], partitions=["cloud"],
    )  # fmt: skip
    [node] = await client.nodes()
    assert (node.state, node.flags, node.cloud, node.powered_down) == (
        "idle",
        frozenset({"CLOUD", "POWERED_DOWN"}),
        True,
        True,
    )
    assert (node.cpus, node.memory_mb, node.gpus, node.gpu_model, node.partitions) == (
        4,
        2000,
        1,
        "l4",
        ("cloud",),
    )


async def test_submit_uses_only_documented_submission_attributes_and_cancel_is_idempotent(
    client: PyslurmClient,
) -> None:
    spec = JobSpec(
        name="prv.pilot.r1", script="#!/bin/bash\nsleep 1\n", partition="debug", time_limit_minutes=30,
        nodes=1, memory_mb=4000, gpus=2, features="x86_64", hold=True, account="atlas", comment="token=t1",
        deadline=datetime.fromtimestamp(T0 + 7200, UTC), time_min_minutes=10,
    )  # fmt: skip
    job_id = await client.submit(spec)
    [sent] = stub.SUBMITTED
    assert sent["resource_sharing"] == "exclusive" and sent["constraints"] == "x86_64"
    assert (sent["partitions"], sent["time_limit"], sent["memory_per_node"], sent["gres_per_node"]) == (
        "debug", "30", "4000M", "gpu:2",
    )  # fmt: skip
    assert sent["priority"] == 0  # pyslurm's --hold
    assert (sent["deadline"], sent["time_limit_min"]) == (T0 + 7200, "10")  # --deadline, --time-min
    await client.cancel(job_id)
    assert stub.QUEUE[int(job_id)].state == "CANCELLED"
    await client.cancel("99999")  # unknown: not an error


async def test_accounting_reads_cpu_time_and_peak_memory_from_the_job_statistics(
    client: PyslurmClient,
) -> None:
    stub.HISTORY.append(
        stub.DbJob(
            id=5, name="done", account="atlas", elapsed_time=3600, cpus=8, start_time=T0, end_time=T0 + 3600,
            stats=stub.JobStatistics(total_cpu_time=25000, max_resident_memory=2 * 1024**3),
            gpus={"gpu": stub.GPU(1)}, nodelist="vm",
        )
    )  # fmt: skip
    stub.HISTORY.append(stub.DbJob(id=6, account="cms"))
    since = datetime(2026, 10, 1, tzinfo=UTC)
    [record] = await client.accounting(since=since, accounts=["atlas"])
    assert (record.job_id, record.elapsed_seconds, record.cpu_seconds, record.max_rss_kb) == (
        "5",
        3600,
        25000,
        2 * 1024**2,
    )
    assert (record.gpus, record.node_list, record.state) == (1, "vm", JobState.COMPLETED)
    assert stub.FILTERS[-1].start_time == since and stub.FILTERS[-1].accounts == ["atlas"]


def test_the_backends_file_can_name_pyslurm_as_a_clusters_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`client = "pyslurm"` opens pyslurm with the table's slurm.conf (libslurm reads it at import)."""
    conf = str(tmp_path / "slurm.conf")
    module = stub.module("22.5.3")
    monkeypatch.delitem(sys.modules, "pyslurm", raising=False)

    def import_module(name: str) -> object:  # the import initialises libslurm: it reads SLURM_CONF now
        assert os.environ["SLURM_CONF"] == conf
        # through monkeypatch, so the stub leaves sys.modules with the test: a leaked stub once stood in
        # for the real pyslurm in the live-cluster tests that ran after this one
        monkeypatch.setitem(sys.modules, name, module)
        return module

    monkeypatch.setattr(pyslurm_client.importlib, "import_module", import_module)
    monkeypatch.setattr(pyslurm_client, "site_slurm_version", lambda: "22.05.8")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    table = SlurmQueueTable(kind="slurm_queue", client="pyslurm", slurm_conf=conf)
    opened = configured._client(table)
    assert isinstance(opened, PyslurmClient) and os.environ["SLURM_CONF"] == conf
    with pytest.raises(PyslurmUnavailable, match="already initialised"):
        PyslurmClient.open(slurm_conf="/other/slurm.conf")  # one libslurm per process

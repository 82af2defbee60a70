"""What the Slurm queue is worth as demand, without a cluster: arrays, exclusive and multi-node jobs,
jobs no capacity would start, GPU spelling, preemptibility and the account → experiment mapping."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.slurm.client import AccountingRecord, JobSpec, JobState, SlurmJob, SlurmNode
from backends.slurm.openapi import job_from_openapi
from provisioner.sources.configured import SourceConfigError, read_queue_tables, slurm_sources
from provisioner.sources.slurm import ExperimentMap, SlurmWorkloadSource, array_task_count


class QueueOnly:
    """A SlurmClient that only answers `jobs` and `nodes` (what a workload source asks)."""

    name = "fake"

    def __init__(self, jobs: list[SlurmJob], nodes: list[SlurmNode] | None = None) -> None:
        self._jobs = jobs
        self._nodes = nodes or []

    async def jobs(self) -> list[SlurmJob]:
        return self._jobs

    async def nodes(self) -> list[SlurmNode]:
        return self._nodes

    async def submit(self, spec: JobSpec) -> str:
        raise NotImplementedError

    async def job(self, job_id: str) -> SlurmJob | None:
        raise NotImplementedError

    async def cancel(self, job_id: str) -> None:
        raise NotImplementedError

    async def accounting(
        self, *, since: datetime, accounts: Collection[str] | None = None
    ) -> list[AccountingRecord]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def pending(job_id: str, **kw: object) -> SlurmJob:
    base: dict[str, object] = {
        "job_id": job_id,
        "name": f"user-{job_id}",
        "state": JobState.PENDING,
        "partition": "debug",
        "account": "atlas",
        "qos": "normal",
        "reason": "Resources",
        "time_limit_minutes": 60,
    }
    base.update(kw)
    return SlurmJob(**base)  # type: ignore[arg-type]


NODES = [
    SlurmNode(
        f"n{i}", "allocated", frozenset(), cpus=32, alloc_cpus=32, memory_mb=128_000, partitions=("debug",)
    )
    for i in range(3)
]


# squeue --json of Slurm 22.05 (trimmed to the fields that matter), as the test cluster printed it
ARRAY_DOC = {
    "job_id": 1, "name": "a", "job_state": "PENDING", "partition": "debug", "account": "atlas",
    "array_job_id": 1, "array_task_id": None, "array_max_tasks": 3, "array_task_string": "0-9%3",
    "cpus": 1, "node_count": 1, "shared": None, "tres_req_str": "cpu=1,mem=500M,node=1,billing=1",
    "tres_per_node": "", "state_reason": "Priority", "time_limit": 30,
}  # fmt: skip
EXCLUSIVE_DOC = {
    "job_id": 2, "name": "x", "job_state": "PENDING", "partition": "debug", "account": "lsst",
    "array_job_id": 0, "array_task_string": "", "array_max_tasks": 0, "cpus": 2, "node_count": 2,
    "shared": "none", "tres_req_str": "cpu=2,mem=1000M,node=2,billing=2,gres/gpu=2",
    "tres_per_node": "gres:gpu:a100:1", "state_reason": "Resources", "time_limit": 120,
}  # fmt: skip


def test_squeue_json_gives_array_tasks_exclusivity_and_gpus_per_node() -> None:
    array = job_from_openapi(ARRAY_DOC)
    assert (array.array_job_id, array.array_tasks, array.array_max_tasks, array.exclusive) == (
        "1",
        "0-9%3",
        3,
        False,
    )
    x = job_from_openapi(EXCLUSIVE_DOC)
    assert (x.exclusive, x.nodes, x.gpus, x.gpus_per_node, x.gpu_model) == (True, 2, 2, 1, "a100")
    assert job_from_openapi({**EXCLUSIVE_DOC, "shared": None}).exclusive is False


@pytest.mark.parametrize(
    ("tasks", "count"),
    [("0-9", 10), ("0-9%3", 10), ("1,3,5-7", 5), ("0-15:4", 4), ("[2-3]", 2), ("7", 1), ("", 0)],
)
def test_array_notation_counts_every_task(tasks: str, count: int) -> None:
    assert array_task_count(tasks) == count


@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 40), st.integers(1, 5)), min_size=1, max_size=6)
)
def test_array_count_equals_the_tasks_the_ranges_expand_to(ranges: list[tuple[int, int, int]]) -> None:
    parts = [f"{a}-{a + n}:{step}" if n else str(a) for a, n, step in ranges]
    expected = sum(len(range(a, a + n + 1, step)) for a, n, step in ranges)
    assert array_task_count(",".join(parts)) == expected


async def test_array_tasks_count_each_up_to_the_throttle_less_those_running() -> None:
    jobs = [
        pending("10", array_job_id="10", array_tasks="0-9", cpus=2),
        pending("20", array_job_id="20", array_tasks="2-9%3", array_max_tasks=3),
        pending("20_0", array_job_id="20", state=JobState.RUNNING, reason=None),
        pending("20_1", array_job_id="20", state=JobState.RUNNING, reason=None),
    ]
    source = SlurmWorkloadSource(QueueOnly(jobs))
    by_array: dict[str, int] = {}
    for p in await source.pending():
        by_array[p.job_id.split("[")[0]] = by_array.get(p.job_id.split("[")[0], 0) + 1
    assert by_array == {"10": 10, "20": 1}  # throttle 3, two running: one more can start
    assert len({p.job_id for p in await source.pending()}) == 11


async def test_exclusive_and_multi_node_jobs_ask_for_whole_nodes_of_their_partition() -> None:
    jobs = [
        pending("1", exclusive=True, cpus=1, memory_mb=500),
        pending("2", nodes=2, cpus=4, memory_mb=1000, gpus=2, gpus_per_node=1),
        pending("3", cpus=3, memory_mb=1536),
    ]
    got = await SlurmWorkloadSource(QueueOnly(jobs, NODES)).pending()
    shapes = sorted((p.job_id, p.cores, round(p.memory_gb, 2), p.gpus) for p in got)
    whole = round(128_000 / 1024, 2)
    assert shapes == [
        ("1", 32, whole, 0),
        ("2+node0", 32, whole, 1),
        ("2+node1", 32, whole, 1),
        ("3", 3, 1.5, 0),
    ]
    assert sum(p.cores for p in got) == 99


async def test_held_dependent_and_limited_jobs_are_left_out_and_reported_with_slurms_reason() -> None:
    jobs = [
        pending("1", reason="JobHeldUser"),
        pending("2", reason="Dependency"),
        pending("3", reason="QOSMaxCpuPerUserLimit", cpus=4),
        pending("4", reason="AssocGrpNodeLimit", array_job_id="4", array_tasks="0-4"),
        pending("5", reason="PartitionTimeLimit"),
        pending("6", reason="Priority"),
        pending("7", reason=None),
        pending("8", reason="ReqNodeNotAvail"),
        pending("9", name="prv.pilot.x"),  # (not ours to judge: see parse_job_name)
    ]
    source = SlurmWorkloadSource(QueueOnly(jobs))
    demand = {p.job_id for p in await source.pending()}
    assert {"6", "7", "8"} <= demand and not demand & {"1", "2", "3", "4", "5"}
    skipped = {s.job_id: s for s in source.skipped}
    assert {k: s.reason for k, s in skipped.items()} == {
        "1": "JobHeldUser",
        "2": "Dependency",
        "3": "QOSMaxCpuPerUserLimit",
        "4": "AssocGrpNodeLimit",
        "5": "PartitionTimeLimit",
    }
    assert (skipped["3"].cores, skipped["4"].tasks) == (4, 5)


async def test_gpu_types_match_the_catalog_spelling_whatever_the_case() -> None:
    jobs = [pending("1", gpus=1, gpu_model="a100"), pending("2", gpus=1, gpu_model="Mi250")]
    got = {
        p.job_id: p.gpu_model
        for p in await SlurmWorkloadSource(QueueOnly(jobs), gpu_models=["A100", "H100"]).pending()
    }
    assert got == {"1": "A100", "2": "Mi250"}


async def test_preemptible_from_the_configured_partitions_or_qos() -> None:
    jobs = [
        pending("1", partition="scavenger"),
        pending("2", qos="backfill"),
        pending("3", partition="opportunistic,debug"),
        pending("4"),
    ]
    source = SlurmWorkloadSource(
        QueueOnly(jobs), preemptible_partitions=["opportunistic"], preemptible_qos=["backfill"]
    )
    assert {p.job_id: p.preemptible for p in await source.pending()} == {
        "1": False,
        "2": True,
        "3": True,
        "4": False,
    }


def test_experiment_is_the_mapped_account_then_the_mapped_partition_then_the_account() -> None:
    mapping = ExperimentMap({"m4321": "atlas"}, {"gpu": "lsst"})
    assert mapping.experiment("m4321", "gpu") == "atlas"
    assert mapping.experiment("other", "debug,gpu") == "lsst"
    assert mapping.experiment("cms", "debug") == "cms"
    assert mapping.experiment(None, "debug") == "debug"


def test_backends_file_slurm_queue_tables_become_named_sources(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(
        '[site]\nkind = "slurm_queue"\npartitions = ["debug"]\npreemptible_qos = ["backfill"]\n'
        'experiments = { m4321 = "atlas" }\npartition_experiments = { gpu = "lsst" }\n'
        '[aws]\nkind = "aws"\nregions = []\n'
    )
    [source] = slurm_sources(path, gpu_models=["A100"])
    assert source.name == "site" and source.experiment("m4321", "x") == "atlas"
    assert source.gpu_model("a100") == "A100"
    path.write_text('[site]\nkind = "slurm_queue"\npartitons = ["debug"]\nclient = "rest"\n')
    with pytest.raises(SourceConfigError, match=r"\[site\] partitons: Extra inputs"):
        read_queue_tables(path)

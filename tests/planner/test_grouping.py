"""Grouping pending jobs into demand groups: every job fits its group, and the columnar path agrees with the list path."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from provisioner.domain import Arch, PendingJob
from provisioner.grouping import JobTable, group_jobs, group_table

job_strategy = st.builds(
    PendingJob,
    job_id=st.uuids().map(str),
    experiment=st.sampled_from(["atlas", "cms", "atlas:1c", "a%3Ab", "lsst+x"]),
    cores=st.sampled_from([1, 2, 8]),
    memory_gb=st.floats(0.1, 3000.0),
    walltime_hours=st.floats(0.01, 1000.0),
    archs=st.sampled_from([frozenset({Arch.X86_64}), frozenset({Arch.X86_64, Arch.ARM64})]),
    gpus=st.sampled_from([0, 1, 2]),
    gpu_model=st.sampled_from([None, "A100", "*", "gpu", "a:b"]),
    input_gb=st.floats(0.0, 50.0),
    output_gb=st.floats(0.0, 5.0),
    data_location=st.sampled_from([None, "onprem:cern", "nodata", "in=nodata", "2x*"]),
    preemptible=st.booleans(),
    priority=st.sampled_from([0, 10, -5]),
)


def _job(job_id: str, gpus: int, gpu_model: str | None) -> PendingJob:
    return PendingJob(job_id, "atlas", 1, 1.0, 1.0, frozenset({Arch.X86_64}), gpus=gpus, gpu_model=gpu_model)


# Found by hypothesis: two jobs that differ only in the model of the GPUs they do not ask for got two
# groups with the same id `atlas:1c:1g:1h:x86_64:nodata:std:p0`.
GPU_MODEL_WITHOUT_GPUS = [_job("a", 0, None), _job("b", 0, "A100")]


@settings(max_examples=50, deadline=None)
@given(jobs=st.lists(job_strategy, max_size=40))
@example(jobs=GPU_MODEL_WITHOUT_GPUS)
def test_every_job_lands_in_exactly_one_group_that_fits_it(jobs: list[PendingJob]) -> None:
    groups = group_jobs(jobs)
    assert sum(g.jobs for g in groups) == len(jobs)
    assert len({g.id for g in groups}) == len(groups)
    for job in jobs:
        matching = [
            g
            for g in groups
            if g.experiment == job.experiment
            and g.cores_per_job == job.cores
            and g.gpus_per_job == job.gpus
            and g.gpu_model == (job.gpu_model if job.gpus else None)
            and g.archs == job.archs
            and g.data_location == job.data_location
            and g.preemptible == job.preemptible
            and g.priority == job.priority
            and g.memory_gb_per_job >= job.memory_gb
            and g.walltime_hours >= job.walltime_hours
            and g.memory_gb_per_job <= max(2 * job.memory_gb, 0.5)
        ]
        assert len(matching) >= 1


def test_input_and_output_volumes_are_kept_as_means() -> None:
    jobs = [
        PendingJob(
            f"j{k}", "atlas", 1, 2.0, 3.0, input_gb=float(k), output_gb=1.0, data_location="onprem:cern"
        )
        for k in range(4)
    ]
    (g,) = group_jobs(jobs)
    assert g.jobs == 4 and g.input_gb_per_job == 1.5 and g.output_gb_per_job == 1.0
    assert g.walltime_hours == 3.0 and g.memory_gb_per_job == 2.0


def test_columnar_and_list_grouping_agree() -> None:
    jobs = [
        PendingJob(f"j{k}", ["atlas", "cms"][k % 2], 1 + k % 3, 2.0 + k % 5, 0.5 + k % 7) for k in range(300)
    ]
    by_list = {g.id: g.jobs for g in group_jobs(jobs)}
    by_table = {g.id: g.jobs for g in group_table(JobTable.from_jobs(jobs))}
    assert by_list == by_table and sum(by_list.values()) == 300


def test_no_jobs_no_groups() -> None:
    assert group_jobs([]) == []


def test_a_gpu_model_without_gpus_does_not_split_a_group() -> None:
    (group,) = group_jobs(GPU_MODEL_WITHOUT_GPUS)
    assert group.jobs == 2 and group.gpu_model is None
    assert group.id == "atlas:1c:1g:1h:x86_64:nodata:std:p0"


def test_names_that_look_like_separators_or_markers_keep_ids_apart() -> None:
    jobs = [
        PendingJob("a", "atlas:1c", 1, 1.0, 1.0),
        PendingJob("b", "atlas", 1, 1.0, 1.0, data_location="nodata"),
        PendingJob("c", "atlas", 1, 1.0, 1.0),
        PendingJob("d", "atlas", 1, 1.0, 1.0, gpus=1, gpu_model="*"),
        PendingJob("e", "atlas", 1, 1.0, 1.0, gpus=1),
    ]
    groups = group_jobs(jobs)
    assert len(groups) == 5 and len({g.id for g in groups}) == 5


def test_memory_beyond_the_last_edge_keeps_every_digit_in_the_id() -> None:
    # 6-significant-digit formatting once made 1,234,567 GB and 1,234,568 GB read the same
    groups = group_jobs(
        [PendingJob("a", "atlas", 1, 1234566.5, 1.0), PendingJob("b", "atlas", 1, 1234567.5, 1.0)]
    )
    assert sorted(g.id.split(":")[2] for g in groups) == ["1234567g", "1234568g"]

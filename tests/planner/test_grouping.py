"""Grouping pending jobs into demand groups: every job fits its group, and the columnar path agrees with the list path."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.domain import Arch, PendingJob
from provisioner.grouping import JobTable, group_jobs, group_table

job_strategy = st.builds(
    PendingJob,
    job_id=st.uuids().map(str),
    experiment=st.sampled_from(["atlas", "cms"]),
    cores=st.sampled_from([1, 2, 8]),
    memory_gb=st.floats(0.1, 3000.0),
    walltime_hours=st.floats(0.01, 1000.0),
    archs=st.sampled_from([frozenset({Arch.X86_64}), frozenset({Arch.X86_64, Arch.ARM64})]),
    gpus=st.sampled_from([0, 1]),
    gpu_model=st.sampled_from([None, "A100"]),
    input_gb=st.floats(0.0, 50.0),
    output_gb=st.floats(0.0, 5.0),
    data_location=st.sampled_from([None, "onprem:cern"]),
    preemptible=st.booleans(),
    priority=st.sampled_from([0, 10, -5]),
)


@settings(max_examples=50, deadline=None)
@given(jobs=st.lists(job_strategy, max_size=40))
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
            and g.gpu_model == job.gpu_model
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

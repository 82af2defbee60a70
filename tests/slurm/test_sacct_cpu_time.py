"""CpuDuration of a pilot comes from sacct's TotalCPU (`time.total` of `sacct --json`), no cluster needed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from accounting.apel import job_values
from backends.slurm.client import JobState
from backends.slurm.openapi import accounting_from_openapi, job_from_openapi
from backends.slurm.pilot import job_name
from backends.slurm.usage import to_usage

T0 = 1_790_000_000  # 2026-09-21 (epoch seconds, as sacct prints them)


def _sacct_job(**time_over: Any) -> dict[str, Any]:
    """One entry of `jobs` in `sacct --json`, shaped as Slurm 22.05 (the test cluster's) prints it:
    a finished 8-core pilot of an hour."""
    return {
        "job_id": 4242,
        "name": job_name("pilot", "p-1"),
        "state": {"current": "COMPLETED", "reason": "None"},
        "partition": "debug",
        "account": "atlas",
        "time": {"submission": T0 - 60, "start": T0, "end": T0 + 3600, "elapsed": 3600} | time_over,
        "tres": {"allocated": [{"type": "cpu", "count": 8}, {"type": "node", "count": 1}]},
    }


def test_sacct_total_cpu_time_becomes_the_records_cpu_seconds_and_apel_cpu_duration() -> None:
    doc = _sacct_job(total={"seconds": 25_000, "microseconds": 600_000})
    record = accounting_from_openapi(doc)
    assert (record.cpu_seconds, record.elapsed_seconds, record.cpus) == (25_001, 3600, 8)
    [usage] = to_usage([record], site="CI-SITE", submit_host="ctl", backend="hpc")
    assert (usage.kind, usage.cpu_seconds, usage.wall_seconds, usage.cores) == ("pilot", 25_001, 3600, 8)
    values = job_values(replace(usage, hs23_per_core=10.0))  # the benchmark comes from the offering
    assert (values["CpuDuration"], values["WallDuration"]) == (25_001, 3600)


def test_missing_total_cpu_time_is_unknown_not_zero_and_the_job_record_sends_0() -> None:
    """No `time.total` (e.g. a sacct that does not report it): unknown CPU time, as the jobcomp log
    gives; a reported 0 s stays 0. APEL's job record sends 0 for unknown (CpuDuration is mandatory)."""
    record = accounting_from_openapi(_sacct_job())
    assert record.cpu_seconds is None
    assert accounting_from_openapi(_sacct_job(total={})).cpu_seconds is None
    assert accounting_from_openapi(_sacct_job(total={"seconds": 0, "microseconds": 0})).cpu_seconds == 0
    [usage] = to_usage([record], site="CI-SITE", submit_host="ctl", backend="hpc")
    assert usage.cpu_seconds is None
    assert job_values(replace(usage, hs23_per_core=10.0))["CpuDuration"] == 0


@pytest.mark.parametrize(
    ("current", "state"),
    [
        ("COMPLETED", JobState.COMPLETED),  # 22.05: a string
        (["COMPLETED"], JobState.COMPLETED),  # 23.02+ data_parser: a list of the state and its flags
        (["CANCELLED", "REQUEUED"], JobState.CANCELLED),
        (["TIMEOUT"], JobState.TIMEOUT),
        ([], JobState.UNKNOWN),
    ],
)
def test_job_state_is_parsed_as_a_string_and_as_a_list(current: Any, state: JobState) -> None:
    doc = _sacct_job(total={"seconds": 100, "microseconds": 0})
    record = accounting_from_openapi(doc | {"state": {"current": current, "reason": "None"}})
    assert record.state is state


def test_a_newer_slurms_finished_job_is_not_dropped_from_usage() -> None:
    """With the list read as UNKNOWN the pilot was not `finished` and to_usage left it out."""
    doc = _sacct_job(total={"seconds": 7_200, "microseconds": 0})
    record = accounting_from_openapi(doc | {"state": {"current": ["COMPLETED"], "reason": "None"}})
    [usage] = to_usage([record], site="CI-SITE", submit_host="ctl", backend="hpc")
    assert (usage.status, usage.cpu_seconds) == ("completed", 7_200)


def test_squeue_job_state_as_a_list() -> None:
    doc = {"job_id": 7, "name": "x", "job_state": ["PENDING"], "partition": "debug"}
    assert job_from_openapi(doc).state is JobState.PENDING
    assert job_from_openapi(doc | {"job_state": "RUNNING"}).state is JobState.RUNNING

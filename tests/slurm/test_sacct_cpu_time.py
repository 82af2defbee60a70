"""CpuDuration of a pilot comes from sacct's TotalCPU (`time.total` of `sacct --json`), no cluster needed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from accounting.apel import job_values
from backends.slurm.openapi import accounting_from_openapi
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

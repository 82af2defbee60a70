"""Summaries grouped the way the APEL server keys them: benchmark at DECIMAL(10,3), CpuCount per VM."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from accounting.apel import JobGroup, summaries_from_groups
from accounting.period import Month
from accounting.summaries import cloud_summaries
from accounting.usage import import_records
from tests.accounting.conftest import OCT, vm


def group(level: float, jobs: int) -> JobGroup:
    end = OCT + timedelta(days=3)
    return JobGroup(
        "UKI-TEST", "atlas", None, None, "ce01", level, 1, 8, 3600 * jobs, 3000 * jobs, jobs, end, end
    )


def test_service_levels_equal_at_the_servers_precision_make_one_summary_with_every_job() -> None:
    out = summaries_from_groups([group(13.3331, 2), group(13.3334, 3), group(13.3336, 1)], 2026, 10)
    assert [(s.service_level, s.jobs) for s in out] == [(13.333, 5), (13.334, 1)]
    assert sum(s.jobs for s in out) == 6  # no job lost to a server-side overwrite


def test_cloud_summaries_carry_per_vm_cpu_count_one_line_per_vm_size(session: Session) -> None:
    records = [vm(1, cores=4), vm(2, cores=4), vm(3, cores=16)]
    assert import_records(session, records, now=OCT + timedelta(days=40)).problems == []
    lines = cloud_summaries(session, Month(2026, 10))
    assert sorted((s.cpu_count, s.vms) for s in lines) == [(4, 2), (16, 1)]

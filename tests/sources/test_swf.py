"""The SWF reader: standard and extended lines, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.sources.swf import SwfError, read_swf

STANDARD = "1 0 10 3600 4 -1 -1 4 7200 -1 1 3 2 -1 1 0 -1 -1"


def test_extended_swf_lines_with_extra_fields_are_read_from_their_standard_fields(tmp_path: Path) -> None:
    trace = tmp_path / "extended.swf"
    trace.write_text(
        f"; extended SWF\n{STANDARD} jobname 42 extra\n{STANDARD.replace('1 0 10', '2 5 10', 1)}\n"
    )
    jobs = list(read_swf(trace))
    assert [j.job_number for j in jobs] == [1, 2]
    assert jobs[0].run_s == 3600 and jobs[0].processors == 4 and jobs[0].requested_time_s == 7200
    assert jobs[0].user_id == 3 and jobs[0].queue == 1 and jobs[0].partition == 0


def test_a_line_with_fewer_than_18_fields_is_refused_with_its_line_number(tmp_path: Path) -> None:
    trace = tmp_path / "short.swf"
    trace.write_text(f"{STANDARD}\n1 0 10 3600\n")
    with pytest.raises(SwfError) as err:
        list(read_swf(trace))
    assert err.value.line == 2 and "at least 18 fields" in err.value.problem


def test_the_bundled_hpc2n_trace_reads_every_job_with_work() -> None:
    trace = Path(__file__).resolve().parents[2] / "data" / "traces" / "alea_hpc2n_subset.swf"
    jobs = list(read_swf(trace))
    assert len(jobs) > 3000 and all(j.run_s > 0 and j.processors > 0 for j in jobs)


def test_the_bundled_kth_subset_reads_its_2000_jobs_from_gzip() -> None:
    """The planner gap benchmark's lp-alone class reads it (benchmarks/trace_instances.py)."""
    trace = Path(__file__).resolve().parents[2] / "data" / "traces" / "KTH-SP2-1996-2.1-cln.first2000.swf.gz"
    jobs = list(read_swf(trace))
    assert len(jobs) == 2000 and jobs[0].job_number == 15 and jobs[-1].job_number == 2014
    assert all(j.run_s > 0 and 0 < j.processors <= 100 for j in jobs)  # the SP2 had 100 processors


@pytest.mark.parametrize(
    ("run_time", "field"),
    [("inf", "run time"), ("-inf", "run time"), ("nan", "run time"), ("1e400", "run time"), ("1e30", "run time"),
     ("x", "run time")],
)  # fmt: skip
def test_a_non_finite_or_absurd_run_time_is_an_swf_error_naming_the_line_and_field(
    tmp_path: Path, run_time: str, field: str
) -> None:
    good = "1 0 5 3600 4 -1 -1 4 7200 -1 1 3 1 -1 1 1 -1 -1"
    bad = good.replace(" 3600 ", f" {run_time} ", 1)
    path = tmp_path / "t.swf"
    path.write_text(f"; header\n{good}\n{bad}\n")
    with pytest.raises(SwfError) as caught:
        list(read_swf(path))
    assert caught.value.line == 3 and field in caught.value.problem and run_time in caught.value.problem

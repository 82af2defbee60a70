"""End to end: an EVEN allocation paced by `provisioner run` on the Slurm test cluster, judged by sacct.

The period is scaled down to 16 minutes (long enough that a few seconds of Slurm's scheduling latency
around one pilot stay well inside 5 % of the grant): one-minute jobs, one-minute pilots, a one-minute planning
horizon. Demand is burst requests of one one-minute job each, one every 20 s for the first minute
(admission places a request only within the pacing of the moment), then a steady backlog of four.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.slurm.broker_process import BrokerProcess, accounted, node_hours_by
from tests.slurm.test_pilots_e2e import ONE_MINUTE_JOB, account, backends, pilots, policy

pytestmark = pytest.mark.slurm
__all__ = ["account"]  # the fixture, shared with test_pilots_e2e


def request_when_placeable(broker: BrokerProcess, *, within: float = 40.0) -> None:
    """`request create` until admitted: a paced allocation places a job once the burn line allows it."""
    deadline = time.monotonic() + within
    while True:
        try:
            broker.request(*ONE_MINUTE_JOB)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


def test_even_allocation_tracks_the_burn_line_never_exceeds_the_grant_nor_runs_past_its_end(
    account: str, tmp_path: Path
) -> None:
    """0.8 node-hours over 16 minutes (three one-minute slices at once on average, four fit): at each
    quarter of the period Slurm's accounting is within 5 % of the grant of the even burn line, it never
    exceeds the grant, and no pilot runs past the end date."""
    period = timedelta(minutes=16)
    granted = 0.8
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=15)
    ends = starts + period
    backend = f"hpc-{account}"
    broker = BrokerProcess(
        tmp_path,
        f"b-{account}",
        policy(account=account, backend=backend, granted=granted, starts=starts, ends=ends),
        backends(backend),
    )
    with broker.run(interval=2):
        for n in range(4):
            while datetime.now(UTC) < starts + timedelta(seconds=1 + 20 * n):
                time.sleep(0.5)
            request_when_placeable(broker)
        while datetime.now(UTC) < ends + timedelta(seconds=15):
            time.sleep(5)
        assert not pilots(account), "pilots still queued or running after the allocation's end"
    time.sleep(3)  # slurmdbd records the last ends
    jobs = [j for j in accounted(account, starts - timedelta(minutes=1)) if j.name.startswith("prv.pilot.")]
    assert jobs, f"no pilot ever ran; broker log:\n{broker.tail()}"
    report = []
    for quarter in (1, 2, 3, 4):
        at = starts + period * quarter / 4
        used, line = node_hours_by(jobs, at), granted * quarter / 4
        report.append(
            f"q{quarter}: used {used:.4f} line {line:.4f} ({(used - line) / granted:+.1%} of the grant)"
        )
    print("\n".join(report))
    for quarter in (1, 2, 3, 4):
        at = starts + period * quarter / 4
        assert abs(node_hours_by(jobs, at) - granted * quarter / 4) <= 0.05 * granted, "\n".join(report)
    assert node_hours_by(jobs, ends + timedelta(minutes=5)) <= granted + 1e-9, "\n".join(report)
    late = [j for j in jobs if j.end is not None and j.end > ends + timedelta(seconds=1)]
    assert not late, f"pilots ran past the end date {ends}: {late}"
    assert all(j.start is None or j.start >= starts for j in jobs), "a pilot started before the period"

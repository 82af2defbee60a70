"""End to end: `provisioner run` as a subprocess on the Slurm test cluster, driven by `request create/cancel`,
`sbatch` and time, judged by Slurm's own view (squeue, sacct).

Periods are scaled down to minutes: one-minute jobs and pilots, a planning horizon of one minute.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.slurm.broker_process import (
    BrokerProcess,
    Job,
    accounted,
    queued_or_running,
    slurm,
    slurm_account,
)
from tests.slurm.conftest import SLURM_CONF

pytestmark = pytest.mark.slurm

# One job of one minute on two cores: the broker keeps serving it (a running pilot is not counted as
# covering the next wave of a one-minute job), so it is a steady backlog for the allocation.
ONE_MINUTE_JOB = (
    "--experiment",
    "atlas",
    "--cores",
    "2",
    "--cores-per-job",
    "2",
    "--hs23-hours",
    "0.3",
    "--job-hours",
    "1m",
)


def policy(
    *,
    account: str,
    backend: str,
    granted: float,
    starts: datetime,
    ends: datetime,
    pacing: str = "even",
    horizon_hours: float = 1 / 60,
    startup_seconds: int = 0,
) -> str:
    return f"""
version = 1
[facility]
horizon_hours = {horizon_hours}
[experiments.atlas]
[allocations.{backend}]
backend = "{backend}"
account = "{account}"
partition = "debug"
node_hours_granted = {granted}
starts = {starts.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}
ends = {ends.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}
pacing = "{pacing}"
max_walltime_hours = 1
max_nodes = 4
startup_seconds = {startup_seconds}
[allocations.{backend}.node]
name = "slice2"
cores = 2
memory_gb = 4
hs23_per_core = 10
[end]
"""


def backends(backend: str) -> str:
    return f"""
[{backend}]
kind = "slurm_allocation"
client = "commands"
slurm_conf = "{SLURM_CONF}"
core_slices = ["{backend}:debug:slice2:allocation"]
pilot_min_minutes = 1
"""


@pytest.fixture
def account(slurm_cluster: Path) -> Iterator[str]:
    with slurm_account(f"sp{uuid.uuid4().hex[:8]}") as name:
        yield name


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, broker: BrokerProcess) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; broker log:\n{broker.tail()}")
        time.sleep(1)


def allocation_broker(
    tmp_path: Path,
    account: str,
    now: datetime,
    *,
    ends: datetime | None = None,
    backends_extra: str = "",
    horizon_hours: float = 1 / 60,
    startup_seconds: int = 0,
) -> BrokerProcess:
    """A broker with one ASAP-paced allocation of 100 node-hours on the test's account, begun a day ago
    and ending `ends` (default: in a day)."""
    backend = f"hpc-{account}"
    return BrokerProcess(
        tmp_path,
        f"b-{account}",
        policy(
            account=account,
            backend=backend,
            granted=100,
            starts=now - timedelta(days=1),
            ends=ends or now + timedelta(days=1),
            pacing="asap",
            horizon_hours=horizon_hours,
            startup_seconds=startup_seconds,
        ),
        backends(backend) + backends_extra,
    )


def pilots(account: str) -> list[str]:
    return [j.job_id for j in queued_or_running(account) if j.name.startswith("prv.pilot.")]


def test_cancelling_a_request_takes_its_allocation_pilots_off_the_queue(account: str, tmp_path: Path) -> None:
    """Allocation pilots cost no money, yet once the request they serve is cancelled they go at once:
    the hours they would hold belong to other work."""
    now = datetime.now(UTC).replace(microsecond=0)
    broker = allocation_broker(tmp_path, account, now, horizon_hours=1)
    with broker.run(interval=2):
        request_id = broker.request(
            "--experiment", "atlas", "--cores", "4", "--cores-per-job", "2", "--duration", "30m"
        )
        # how many pilots carry the two jobs is the planner's choice (one node may take both)
        wait_for(
            lambda: bool(pilots(account)), timeout=120, what="the request's pilots in squeue", broker=broker
        )
        seen = set(pilots(account))
        broker.cli("request", "cancel", request_id)
        wait_for(lambda: not pilots(account), timeout=30, what="the pilots to leave squeue", broker=broker)

        def cancelled() -> dict[str, str]:
            jobs = accounted(account, now - timedelta(minutes=1))
            return {j.job_id: j.state for j in jobs if j.name.startswith("prv.pilot.")}

        # slurmctld hands finished jobs to slurmdbd on its own time: sacct may lag squeue by seconds
        # (CI once found no pilot at all in sacct right after squeue showed them gone)
        wait_for(lambda: seen <= cancelled().keys(), timeout=30, what="sacct to record the pilots", broker=broker)
    states = cancelled()
    assert states and set(states.values()) == {"CANCELLED"}, states


def test_pilots_queued_at_the_allocations_end_are_cancelled_and_none_starts_after_it(
    account: str, tmp_path: Path
) -> None:
    """The node is full of someone else's work until after the end date: the pilots wait in the queue,
    and are gone at the end — none of them ever starts after it."""
    now = datetime.now(UTC).replace(microsecond=0)
    ends = now + timedelta(seconds=100)
    # queued within a minute of the end: drained as "allocation ending"
    broker = allocation_broker(tmp_path, account, now, ends=ends, startup_seconds=30)
    # the whole node, for longer than the allocation lasts (charged to the test's account, not a pilot)
    blocker = slurm(
        "sbatch", "--parsable", f"--account={account}", "--partition=debug", "--nodes=1", "--exclusive",
        "--time=4", "--job-name=owner-work", "--output=/dev/null", "--wrap=sleep 150",
    ).strip()  # fmt: skip
    try:
        with broker.run(interval=2):
            broker.request(*ONE_MINUTE_JOB)
            wait_for(
                lambda: bool(pilots(account)), timeout=60, what="pilots waiting in squeue", broker=broker
            )
            while datetime.now(UTC) < ends + timedelta(seconds=10):
                time.sleep(3)
            assert not pilots(account), "pilots still queued after the allocation's end"
    finally:
        slurm("scancel", blocker, check=False)
    jobs = [j for j in accounted(account, now - timedelta(minutes=1)) if j.name.startswith("prv.pilot.")]
    assert jobs and all(j.start is None or j.start < ends for j in jobs), jobs
    assert all(j.end is None or j.end <= ends + timedelta(seconds=1) for j in jobs if j.start), jobs
    # gone because the broker drained them as the end neared, or because Slurm's deadline removed them
    reasons = [reason for _, reason in broker_resource_states(tmp_path).values()]
    ending = any("allocation ending" in r for r in reasons)
    assert ending or any(j.state == "DEADLINE" for j in jobs), (reasons, jobs)


# A payload like a glidein's startd: it takes work items from a queue until none is left, then waits for
# more, using no CPU. Each item is 10 s of CPU, then 10 s waiting on I/O (it says so by touching
# $PILOT_WORK_FILE): longer than the idle time either way, so the wrapper must see both kinds of work.
WORK_QUEUE_PAYLOAD = """#!/bin/bash
queue={queue}
out={out}
while true; do
  item=$(ls "$queue" | head -1)
  if [ -n "$item" ] && mv "$queue/$item" "$out/claimed-$item-$SLURM_JOB_ID" 2>/dev/null; then
    end=$(( $(date +%s) + 10 )); while [ "$(date +%s)" -lt $end ]; do :; done
    for _ in $(seq 10); do touch "$PILOT_WORK_FILE"; sleep 1; done
    touch "$out/done-$item-$SLURM_JOB_ID"
  fi
  sleep 1
done
"""
IDLE_EXIT_SECONDS = 8


def test_pilots_end_themselves_when_their_group_has_no_work_left_and_the_broker_records_a_normal_end(
    account: str, tmp_path: Path
) -> None:
    """One work item for the group: the first pilot does it (CPU, then I/O, each longer than the idle
    time) and ends itself once the queue is empty; pilots started after it find nothing and end after the
    idle time. Slurm frees the slots (COMPLETED, long before the pilots' limits) with the request still
    open; the broker records each as released, ended by itself — none lost, none cancelled by it."""
    from provisioner.reconciler import ENDED_BY_ITSELF

    now = datetime.now(UTC).replace(microsecond=0)
    queue, out = tmp_path / "queue", tmp_path / "out"
    queue.mkdir()
    out.mkdir()
    (queue / "item1").touch()
    payload = tmp_path / "payload.sh"
    payload.write_text(WORK_QUEUE_PAYLOAD.format(queue=queue, out=out))
    payload.chmod(0o755)
    broker = allocation_broker(
        tmp_path,
        account,
        now,
        horizon_hours=1,
        backends_extra=f'pilot_command = "{payload}"\npilot_idle_exit_seconds = {IDLE_EXIT_SECONDS}\n',
    )

    def ended_pilots() -> list[Job]:
        return [
            j
            for j in accounted(account, now - timedelta(minutes=1))
            if j.name.startswith("prv.pilot.") and j.end is not None
        ]

    with broker.run(interval=2):
        request_id = broker.request(
            "--experiment", "atlas", "--cores", "2", "--cores-per-job", "2", "--duration", "30m"
        )  # fmt: skip
        wait_for(
            lambda: len(ended_pilots()) >= 2,
            timeout=240, what="two pilots ending by themselves", broker=broker,
        )  # fmt: skip
        ended = ended_pilots()
        time.sleep(6)  # a few cycles for the broker to record what Slurm shows
        states = broker_resource_states(tmp_path)
        broker.cli("request", "cancel", request_id)
    assert all(j.state == "COMPLETED" for j in ended), ended
    [worker] = [p.name.split("-")[-1] for p in out.glob("done-item1-*")]  # did the whole item
    assert not list(queue.iterdir())
    for job in ended:
        assert job.start is not None and job.end is not None
        elapsed = (job.end - job.start).total_seconds()
        # (Slurm's times and the work file's mtime are whole seconds: a second or two either way)
        if job.job_id == worker:  # 20 s of work, then the idle time
            assert 20 <= elapsed <= 20 + IDLE_EXIT_SECONDS + 30, (job, elapsed)
        else:  # nothing to do: the idle time, no less (the 30 min pilot limit is far off)
            assert IDLE_EXIT_SECONDS - 2 <= elapsed <= IDLE_EXIT_SECONDS + 30, (job, elapsed)
    assert worker in {j.job_id for j in ended}
    for job in ended:
        resource = job.name.removeprefix("prv.pilot.")
        state, reasons = states[resource]
        assert state == "released" and ENDED_BY_ITSELF in reasons, (resource, state, reasons, broker.tail())
    assert not [r for r, (state, _) in states.items() if state == "lost"], states


def backfill_policy(backend: str) -> str:
    return f"""
version = 1
[experiments.atlas]
[backfill.{backend}]
backend = "{backend}"
partition = "scavenger"
max_nodes = 4
eviction_rate_per_hour = 0.01
startup_seconds = 5
[backfill.{backend}.node]
name = "slice2"
cores = 2
memory_gb = 4
hs23_per_core = 10
[end]
"""


def backfill_backends(backend: str, account: str) -> str:
    return f"""
[{backend}]
kind = "slurm_backfill"
client = "commands"
slurm_conf = "{SLURM_CONF}"
partition = "scavenger"
account = "{account}"
"""


def backfill_pilots(account: str) -> list[str]:
    return [j.job_id for j in queued_or_running(account) if j.name.startswith("prv.backfill.")]


def test_owner_job_evacuates_backfill_pilots_and_none_return_while_it_runs(
    account: str, tmp_path: Path
) -> None:
    """Backfill fills the node; the owner's job arrives: the pilots leave, the owner runs, the broker records
    an owner reclaim (not a lost unit) and starts nothing on the node until the owner is done."""
    backend = f"bf-{account}"
    broker = BrokerProcess(
        tmp_path, f"b-{account}", backfill_policy(backend), backfill_backends(backend, account)
    )
    owner = ""
    try:
        with broker.run(interval=2):
            broker.request(
                "--experiment", "atlas", "--cores", "8", "--cores-per-job", "2", "--duration", "30m", "--preemptible"
            )  # fmt: skip
            wait_for(
                lambda: len([j for j in queued_or_running(account) if j.state == "RUNNING"]) >= 2,
                timeout=90, what="backfill pilots running", broker=broker,
            )  # fmt: skip
            # the owner outlives the whole watch (cancelled below), so a pilot that starts after it ended
            # (which is right) cannot be taken for one started under it
            owner = slurm(
                "sbatch", "--parsable", f"--account={account}", "--partition=owner", "--ntasks=8", "--time=10",
                "--job-name=owner-work", "--output=/dev/null", "--wrap=sleep 600",
            ).strip()  # fmt: skip
            wait_for(
                lambda: not backfill_pilots(account)
                and any(j.job_id == owner and j.state == "RUNNING" for j in queued_or_running(account)),
                timeout=30, what="the pilots gone and the owner job running", broker=broker,
            )  # fmt: skip
            for _ in range(12):  # while the owner runs, nothing of ours is queued or started on its node
                assert not backfill_pilots(account), f"backfill resubmitted under the owner:\n{broker.tail()}"
                time.sleep(2)
    finally:
        if owner:
            slurm("scancel", owner, check=False)
    states = broker_resource_states(tmp_path)
    assert states and all(state == "released" for state, _ in states.values()), states
    assert all("backfill owner needs the node" in reason for _, reason in states.values()), states


def broker_resource_states(directory: Path) -> dict[str, tuple[str, str]]:
    """resource id -> (state, reasons of its transitions joined by '; '), from the broker's own database."""
    import json
    import sqlite3

    with sqlite3.connect(directory / "state" / "provisioner.db") as db:
        rows = db.execute(
            "SELECT subject, payload FROM events WHERE kind = 'resource.state' ORDER BY at, id"
        ).fetchall()
    out: dict[str, tuple[str, str]] = {}
    for subject, payload in rows:
        doc = json.loads(payload)
        reasons = [
            r for r in (out.get(subject, ("", ""))[1], doc.get("reason") or doc.get("failure_reason")) if r
        ]
        out[subject] = (doc.get("to"), "; ".join(reasons))
    return out

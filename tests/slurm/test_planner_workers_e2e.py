"""The broker's planner on its second core, as an operator runs it: `provisioner run` with
PROVISIONER_PLANNER_WORKERS=2 reads a Slurm queue of 960 distinct job shapes (enough groups for the
costing to be split), plans them with a kept worker process, and starts VMs on EC2 (moto_server).

Judged by the peers' own views: EC2's describe-instances for what was started, the operating system's
process table for the worker (a child of the broker while it runs, gone when the broker is stopped).
That a split plan equals the single-process plan is tests/planner/test_workers.py's.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import TAG_EXPERIMENT, TAG_GROUP
from provisioner.planner.costing_parts import PART_MIN_GROUPS
from tests.aws.conftest import amis, credentials_file, moto, moto_server  # noqa: F401
from tests.slurm.conftest import SLURM_CONF
from tests.slurm.test_queue_to_aws_e2e import POLICY, backends, live_instances, start_run
from tests.slurm.test_run_e2e import sbatch, squeue, wait_until

pytestmark = pytest.mark.slurm

CORES = range(1, 9)  # the test node has 8
MEMORY_MB = (512, 1024, 2048, 3072, 4096, 6144)  # one grouping bucket each
# one grouping walltime bucket each (provisioner/grouping.py's edges, in minutes)
WALLTIME_MINUTES = (15, 30, 60, 120, 180, 240, 360, 480, 720, 1080, 1440, 2160, 2880, 4320, 5760, 7200,
                    10080, 14400, 20160, 43200)  # fmt: skip
SHAPES = len(CORES) * len(MEMORY_MB) * len(WALLTIME_MINUTES)
WORKER_CMDLINE = b"provisioner.planner.workers import serve"


def _children(pid: int) -> list[tuple[int, bytes]]:
    """(pid, command line) of `pid`'s children, from /proc: the process table as the OS keeps it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # ended meanwhile
            continue
        # the parent pid is the 2nd field after the parenthesised command name
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def shapes(slurm_cluster: Path, tag: str) -> Iterator[str]:
    """A blocker holding the node, then one waiting atlas job per shape; all cancelled afterwards."""
    env = {**os.environ, "SLURM_CONF": str(SLURM_CONF)}
    env.pop("SLURM_JWT", None)
    name = f"split.{tag}"
    try:
        blocker = sbatch(f"--job-name={name}", "--partition=owner", "--account=dune", "--exclusive", "-t", "60")
        wait_until(lambda: any(j[0] == blocker and j[2] == "RUNNING" for j in squeue()), "the blocker to run")
        # one shell reading them all: a Python subprocess per sbatch would take minutes
        script = "\n".join(
            f"sbatch --parsable --output=/dev/null --job-name={name} --partition=debug --account=atlas "
            f"-c {c} --mem={m} -t {t} --wrap 'sleep 300' >/dev/null || exit 1"
            for c in CORES
            for m in MEMORY_MB
            for t in WALLTIME_MINUTES
        )
        subprocess.run(["bash"], input=script, text=True, env=env, check=True, timeout=600)
        yield name
    finally:
        subprocess.run(["scancel", f"--name={name}"], env=env, check=False)


def test_the_running_broker_costs_on_a_kept_worker_and_starts_the_plan_on_ec2(
    tmp_path: Path,
    tag: str,
    shapes: str,
    moto: str,  # noqa: F811
    credentials_file: Path,  # noqa: F811
    amis: dict[str, str],  # noqa: F811
) -> None:
    assert SHAPES >= 2 * PART_MIN_GROUPS, "too few groups for the costing to be split"
    waiting = [j for j in squeue() if j[1] == shapes and j[2] == "PENDING" and j[3] == "atlas"]
    assert len(waiting) == SHAPES, f"{len(waiting)} of {SHAPES} jobs waiting"
    (tmp_path / "policy.toml").write_text(POLICY)
    # no wake on new submissions: the one cycle seen is the first
    (tmp_path / "backends.toml").write_text(backends(moto, credentials_file, amis, poll_seconds=0))
    broker_id = f"e2e-split-{tag}"
    # one cycle, then none for an hour: what is seen afterwards is that cycle's
    run, log = start_run(tmp_path, broker_id, interval=3600, planner_workers="2")
    worker: int | None = None
    try:
        wait_until(lambda: "cycle.done" in log.read_text(), "the first cycle", timeout=240)

        workers = [(pid, cmd) for pid, cmd in _children(run.pid) if WORKER_CMDLINE in cmd]
        # the costing was split: one kept worker process beside the broker, as the setting asks
        assert len(workers) == 1, _children(run.pid)
        worker = workers[0][0]

        started = live_instances(moto, broker_id)
        assert started, log.read_text()[-4000:]
        groups = {i["TagMap"][TAG_GROUP] for i in started}
        assert {i["TagMap"][TAG_EXPERIMENT] for i in started} == {"atlas"}
        # VMs for groups of many shapes: the plan covered the queue, not one part of it
        assert len(groups) >= 8, groups
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        print(log.read_text()[-6000:])
    # the worker ends with the broker: its pipe closed, it exits (not left orphaned, costing nothing)
    if worker is not None:
        wait_until(lambda: not _alive(worker), "the planner worker to end with the broker", timeout=30)

"""`provisioner plan` and `provisioner run` as an operator starts them, against the Slurm test cluster.

Driven only by sbatch/scancel and time; asserted on Slurm's own view (squeue), not on the broker's tables.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.slurm.pilot import parse_job_name
from provisioner.broker import build_broker
from provisioner.settings import Settings
from tests.slurm.conftest import SLURM_CONF

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]


def policy(account: str) -> str:
    return f"""
version = 1

[experiments.atlas]
backends = ["hpc"]
markets = ["allocation"]
archs = ["x86_64"]

[allocations.e2e]
backend = "hpc"
account = "{account}"
partition = "debug"
node_hours_granted = 1000
starts = 2020-01-01T00:00:00Z
ends = 2099-12-31T00:00:00Z
pacing = "asap"
max_walltime_hours = 1
max_nodes = 2

[allocations.e2e.node]
name = "testnode"
cores = 8
memory_gb = 2
arch = "x86_64"
hs23_per_core = 10

[end]
"""


def backends() -> str:
    return f"""
[hpc]
kind = "slurm_allocation"
client = "commands"
slurm_conf = "{SLURM_CONF}"

[site-queue]
kind = "slurm_queue"
client = "commands"
slurm_conf = "{SLURM_CONF}"
partitions = ["debug"]
accounts = ["atlas"]
experiments = {{ atlas = "atlas" }}
"""


def slurm(*args: str) -> str:
    env = {**os.environ, "SLURM_CONF": str(SLURM_CONF)}
    env.pop("SLURM_JWT", None)
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30, env=env).stdout


def sbatch(*args: str) -> str:
    return (
        slurm("sbatch", "--parsable", "--output=/dev/null", *args, "--wrap", "sleep 300")
        .strip()
        .split(";")[0]
    )


def squeue() -> list[tuple[str, str, str, str, str]]:
    """(job id, name, state, account, comment) of every job Slurm knows."""
    out = slurm("squeue", "--all", "-h", "-o", "%i|%j|%T|%a|%k")
    return [tuple(line.split("|")) for line in out.splitlines() if line]  # type: ignore[misc]


def provisioner(state: Path, broker_id: str, *args: str, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {
        "PROVISIONER_STATE_DIR": str(state),
        "PROVISIONER_BROKER_ID": broker_id,
        "PROVISIONER_POLICY_FILE": str(state / "policy.toml"),
        "PROVISIONER_BACKENDS_FILE": str(state / "backends.toml"),
        "SLURM_CONF": str(SLURM_CONF),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
    }
    env.pop("SLURM_JWT", None)
    out = subprocess.run(
        [sys.executable, "-c", "from provisioner.cli import main; main()", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def jobs(slurm_cluster: Path) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for job_id in ids:
        subprocess.run(["scancel", job_id], check=False, env={**os.environ, "SLURM_CONF": str(SLURM_CONF)})


def wait_until(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_queued_jobs_become_pilots_and_held_jobs_are_listed_not_planned(
    tmp_path: Path, tag: str, jobs: list[str]
) -> None:
    (tmp_path / "policy.toml").write_text(policy("atlas"))
    (tmp_path / "backends.toml").write_text(backends())
    broker_id = f"e2e-{tag}"
    # the owner takes the whole node, so the atlas jobs really wait for capacity
    blocker = sbatch(
        f"--job-name=blk.{tag}", "--partition=owner", "--account=dune", "--exclusive", "-t", "30"
    )
    jobs.append(blocker)
    wait_until(lambda: any(j[0] == blocker and j[2] == "RUNNING" for j in squeue()), "the blocker to run")
    array = sbatch(f"--job-name=arr.{tag}", "--partition=debug", "--account=atlas", "--array=0-5", "-t", "30")
    held = sbatch(f"--job-name=held.{tag}", "--partition=debug", "--account=atlas", "--hold", "-t", "30")
    exclusive = sbatch(
        f"--job-name=excl.{tag}", "--partition=debug", "--account=atlas", "--exclusive", "-t", "30"
    )
    jobs += [array, held, exclusive]

    plan = provisioner(tmp_path, broker_id, "plan")
    # six array tasks and one whole node: seven entries; the held job is listed with Slurm's reason
    assert "7 pending jobs from the workload sources" in plan, plan
    assert held in plan and "JobHeldUser" in plan, plan
    assert not [j for j in squeue() if parse_job_name(j[1])], "plan must not submit anything"

    out = provisioner(tmp_path, broker_id, "run", "--cycles", "1", "--interval", "1")
    assert "cycle 1: 7 pending jobs" in out, out
    pilots = [j for j in squeue() if parse_job_name(j[1]) is not None and broker_id in j[4]]
    jobs += [p[0] for p in pilots]
    assert pilots, out
    assert {p[3] for p in pilots} == {"atlas"}  # charged to the allocation's account
    # at most the allocation's two nodes, however many jobs wait
    assert len(pilots) <= 2, pilots


ZERO_CAPS = """
version = 1

[experiments.cms]
backends = ["aws"]
markets = ["on_demand"]
spend_rate_cap_per_hour = "0"

[experiments.cms.budgets]
monthly = "0"

[end]
"""


def refused_nodes() -> dict[str, str]:
    """Cloud nodes `scontrol show node` shows DOWN with the broker's refusal, and that line."""
    out = slurm("scontrol", "-o", "show", "node")
    found = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        down = "DOWN" in fields.get("State", "").split("+")
        if "cloud" in fields.get("Partitions", "") and down and "Reason=provisioner: refused:" in line:
            found[fields["NodeName"]] = line
    return found


def cloud_states() -> dict[str, str]:
    out = slurm("sinfo", "-h", "-N", "-p", "cloud", "-o", "%N|%T")
    return dict(line.split("|", 1) for line in out.splitlines())


@pytest.fixture
def power_broker(slurm_cluster: Path, tmp_path: Path) -> Iterator[Path]:
    """Point the cluster's Resume/SuspendProgram at this test's policy and state (etc/broker.env)."""
    resume_program = slurm_cluster / "bin" / "resume.sh"
    if "broker.env" not in resume_program.read_text():
        pytest.skip(f"{resume_program} predates etc/broker.env: run scripts/slurm-cluster.sh start")
    env_file = slurm_cluster / "etc" / "broker.env"
    (tmp_path / "policy.toml").write_text(ZERO_CAPS)
    env_file.write_text(
        f"PROVISIONER_STATE_DIR={tmp_path / 'broker'}\nPROVISIONER_POLICY_FILE={tmp_path / 'policy.toml'}\n"
    )
    try:
        yield tmp_path
    finally:
        env_file.unlink(missing_ok=True)


def test_cloud_node_resume_refused_by_policy_stays_down_with_the_reason(
    power_broker: Path, tag: str, jobs: list[str]
) -> None:
    job = sbatch(f"--job-name=refused.{tag}", "--partition=cloud", "--account=cms", "-t", "5")
    jobs.append(job)
    refused: dict[str, str] = {}

    def node_down() -> bool:
        refused.update(refused_nodes())
        return bool(refused)

    try:
        # Slurm's own view, at the moment it shows it (a node whose slurmd is still up from an
        # earlier resume returns to service by itself: ReturnToService=2)
        wait_until(node_down, "scontrol to show a cloud node DOWN with the broker's refusal", timeout=90)
        [(node, line)] = refused.items()
        reason = line.split("Reason=", 1)[1]
        assert "cms" in reason and ("budget" in reason or "spend" in reason), reason  # the policy's words
        # nothing was provisioned for it (read raw: the resume program may run a newer schema than this test)
        with sqlite3.connect(power_broker / "broker" / "provisioner.db") as db:
            assert db.execute("select count(*) from resources").fetchone() == (0,)
    finally:
        slurm("scancel", job)  # first: a waiting job would have Slurm resume another node
        for node in refused:
            slurm("scontrol", "update", f"nodename={node}", "state=power_down_force")
            wait_until(
                lambda n=node: cloud_states()[n] == "idle~",  # type: ignore[misc]
                f"{node} powered down again",
                timeout=60,
            )


def test_a_submission_wakes_a_running_broker_long_before_its_timer(
    tmp_path: Path, tag: str, jobs: list[str]
) -> None:
    (tmp_path / "policy.toml").write_text(policy("atlas"))
    (tmp_path / "backends.toml").write_text(backends() + "poll_seconds = 1\n")
    broker_id = f"e2e-wake-{tag}"
    blocker = sbatch(
        f"--job-name=blk.{tag}", "--partition=owner", "--account=dune", "--exclusive", "-t", "30"
    )
    jobs.append(blocker)
    wait_until(lambda: any(j[0] == blocker and j[2] == "RUNNING" for j in squeue()), "the blocker to run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")} | {
        "PROVISIONER_STATE_DIR": str(tmp_path),
        "PROVISIONER_BROKER_ID": broker_id,
        "PROVISIONER_POLICY_FILE": str(tmp_path / "policy.toml"),
        "PROVISIONER_BACKENDS_FILE": str(tmp_path / "backends.toml"),
        "SLURM_CONF": str(SLURM_CONF),
        "PYTHONPATH": str(REPO),
    }
    env.pop("SLURM_JWT", None)
    run = subprocess.Popen(
        [sys.executable, "-c", "from provisioner.cli import main; main()", "run", "--interval", "3600"],
        env=env | {"PROVISIONER_LOG_LEVEL": "INFO"}, cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "run.log").open("w"),
    )  # fmt: skip
    try:
        settings = Settings(state_dir=tmp_path, broker_id=broker_id)
        store = build_broker(settings).store
        wait_until(lambda: bool(store.events(kind="cycle.finished")), "the first (empty) cycle", timeout=90)
        assert not [j for j in squeue() if broker_id in j[4]]
        jobs.append(sbatch(f"--job-name=new.{tag}", "--partition=debug", "--account=atlas", "-t", "30"))
        wait_until(lambda: any(broker_id in j[4] for j in squeue()), "a pilot for the new job", timeout=60)
    finally:
        run.terminate()
        run.wait(timeout=30)
        jobs += [j[0] for j in squeue() if broker_id in j[4]]
        print((tmp_path / "run.log").read_text()[-6000:])

"""The Slurm queue as demand for cloud VMs: `provisioner run` as an operator starts it, reading the test
cluster's queue and provisioning on EC2 (moto_server over HTTP).

Driven only by sbatch/scancel and time; asserted on Slurm's view (squeue) and on EC2's own
(describe-instances), not on the broker's tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import TAG_BROKER, TAG_EXPERIMENT, TAG_GROUP, TAG_OFFERING
from provisioner.catalog import load_catalog
from tests.aws.conftest import (  # noqa: F401
    REGION,
    amis,
    aws_backends_table,
    credentials_file,
    ec2_client,
    moto,
    moto_server,
)
from tests.slurm.conftest import SLURM_CONF
from tests.slurm.test_run_e2e import REPO, sbatch, slurm, squeue, wait_until

pytestmark = pytest.mark.slurm

LIVE_EC2 = {"pending", "running"}

# atlas may use AWS on-demand x86 only, within a small budget: the queue's jobs go to EC2 or nowhere.
# A 6-minute horizon: each VM runs one wave of the jobs, so they start together (with the default
# 24 h, one VM would run them one after another, which costs about the same; the planner scales a
# job's 30-minute limit by the offering's HS23 per core, so even half an hour is several waves).
POLICY = """
version = 1

[facility]
horizon_hours = 0.1

[experiments.atlas]
backends = ["aws"]
markets = ["on_demand"]
archs = ["x86_64"]
spend_rate_cap_per_hour = "20"

[experiments.atlas.budgets]
monthly = "500"

[end]
"""


def backends(endpoint: str, credentials: Path, images: dict[str, str], poll_seconds: float = 1) -> str:
    return (
        aws_backends_table(endpoint, images, credentials)
        + f"""
[site-queue]
kind = "slurm_queue"
client = "commands"
slurm_conf = "{SLURM_CONF}"
partitions = ["debug"]
accounts = ["atlas"]
experiments = {{ atlas = "atlas" }}
poll_seconds = {poll_seconds:g}
"""
    )


def instances(endpoint: str, broker_id: str) -> list[dict[str, Any]]:
    """EC2's own view of this broker's instances (any state), each with its tags as a dict."""
    ec2 = ec2_client(endpoint)
    found = []
    filters = [{"Name": f"tag:{TAG_BROKER}", "Values": [broker_id]}]
    for reservation in ec2.describe_instances(Filters=filters)["Reservations"]:
        for inst in reservation["Instances"]:
            inst["TagMap"] = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            found.append(inst)
    return found


def live_instances(endpoint: str, broker_id: str) -> list[dict[str, Any]]:
    """EC2's own view of this broker's pending or running instances."""
    return [i for i in instances(endpoint, broker_id) if i["State"]["Name"] in LIVE_EC2]


def start_run(
    directory: Path, broker_id: str, interval: float, **settings: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """`provisioner run --interval N` as an operator starts it, with `directory`'s policy.toml and
    backends.toml and these PROVISIONER_* `settings`; its output goes to the log returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "AWS_"))} | {
        "PROVISIONER_STATE_DIR": str(directory),
        "PROVISIONER_BROKER_ID": broker_id,
        "PROVISIONER_POLICY_FILE": str(directory / "policy.toml"),
        "PROVISIONER_BACKENDS_FILE": str(directory / "backends.toml"),
        "PROVISIONER_LOG_LEVEL": "INFO",
        "SLURM_CONF": str(SLURM_CONF),
        "PYTHONPATH": str(REPO),
    } | {f"PROVISIONER_{name.upper()}": value for name, value in settings.items()}
    env.pop("SLURM_JWT", None)
    log = directory / "run.log"
    run = subprocess.Popen(
        [sys.executable, "-c", "from provisioner.cli import main; main()", "run", "--interval", f"{interval:g}"],
        env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return run, log


@pytest.fixture
def jobs(slurm_cluster: Path) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    env = {**os.environ, "SLURM_CONF": str(SLURM_CONF)}
    env.pop("SLURM_JWT", None)
    for job_id in ids:
        subprocess.run(["scancel", job_id], check=False, env=env)


def test_queued_jobs_become_ec2_instances_and_scancel_terminates_them(
    tmp_path: Path,
    tag: str,
    jobs: list[str],
    moto: str,  # noqa: F811
    credentials_file: Path,  # noqa: F811
    amis: dict[str, str],  # noqa: F811
) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "backends.toml").write_text(backends(moto, credentials_file, amis))
    broker_id = f"e2e-aws-{tag}"
    # the owner takes the whole local node, so the atlas jobs really wait for capacity
    blocker = sbatch(
        f"--job-name=blk.{tag}", "--partition=owner", "--account=dune", "--exclusive", "-t", "30"
    )
    jobs.append(blocker)
    wait_until(lambda: any(j[0] == blocker and j[2] == "RUNNING" for j in squeue()), "the blocker to run")
    waiting = [
        sbatch(f"--job-name=q{i}.{tag}", "--partition=debug", "--account=atlas", "-c", "2", "-t", "30")
        for i in range(3)
    ]
    jobs += waiting

    run, log = start_run(tmp_path, broker_id, interval=2)
    try:

        def live() -> list[dict[str, Any]]:
            return live_instances(moto, broker_id)

        offerings = {o.id: o for o in load_catalog().offerings}

        def live_cores() -> int:
            return sum(offerings[i["TagMap"][TAG_OFFERING]].cores for i in live())

        # 3 waiting jobs of 2 cores each: capacity for 6 cores
        wait_until(
            lambda: live_cores() >= 6, "EC2 instances for the 6 cores the waiting jobs need", timeout=120
        )
        started = live()
        for inst in started:
            tags = inst["TagMap"]
            # the job's account is the experiment; the offering is the policy's only allowed market
            assert tags[TAG_EXPERIMENT] == "atlas", tags
            assert tags[TAG_OFFERING].startswith(f"aws:{REGION}:") and tags[TAG_OFFERING].endswith(
                ":on_demand"
            )
            assert inst["InstanceType"] == tags[TAG_OFFERING].split(":")[2]
            assert tags[TAG_GROUP].startswith("atlas:"), tags  # a queue group, not a burst request
            assert inst.get("InstanceLifecycle") != "spot"
            assert inst["ImageId"] == amis["x86_64"]
        assert len(started) <= 3, [(i["InstanceId"], i["InstanceType"]) for i in started]
        ids = {i["InstanceId"] for i in started}
        # the demand stays: a few more cycles add nothing
        wait_until(lambda: len(log.read_text().split("cycle.done")) > 4, "three more cycles", timeout=60)
        assert {i["InstanceId"] for i in live()} == ids

        for job_id in waiting:
            slurm("scancel", job_id)
        # no demand left for the group: the broker terminates its VMs (EC2 says so)
        wait_until(lambda: not live(), "EC2 to show the instances terminated after scancel", timeout=120)
        gone = {
            i["InstanceId"]: i["State"]["Name"] for i in instances(moto, broker_id) if i["InstanceId"] in ids
        }
        assert set(gone.values()) <= {"shutting-down", "terminated"}, gone
    finally:
        run.terminate()
        run.wait(timeout=30)
        print(log.read_text()[-6000:])

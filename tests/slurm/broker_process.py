"""`provisioner run` as an operator starts it, against the Slurm test cluster: a broker subprocess with its
own policy and backends files, a Slurm account of its own, and Slurm's view (squeue, sacct) to judge it by."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.slurm.conftest import SLURM_CONF

REPO = Path(__file__).resolve().parents[2]


def slurm(*args: str, check: bool = True) -> str:
    out = subprocess.run(
        list(args), capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SLURM_CONF": str(SLURM_CONF), "TZ": "UTC"},
    )  # fmt: skip
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


@contextmanager
def slurm_account(name: str) -> Iterator[str]:
    """A Slurm account of the test's own (root may use it), so sacct shows only this test's jobs."""
    slurm("sacctmgr", "-i", "add", "account", name)
    slurm("sacctmgr", "-i", "add", "user", "root", f"account={name}")
    try:
        yield name
    finally:
        slurm("scancel", f"--account={name}", check=False)
        slurm("sacctmgr", "-i", "delete", "user", "root", f"account={name}", check=False)
        slurm("sacctmgr", "-i", "delete", "account", name, check=False)


@dataclass(frozen=True, slots=True)
class Job:
    """One job as Slurm itself reports it (squeue or sacct)."""

    job_id: str
    name: str
    state: str
    start: datetime | None
    end: datetime | None
    nodes: int = 1


def _epoch(value: object) -> datetime | None:
    if isinstance(value, dict):  # sacct/squeue 22.05 give plain numbers, later releases {"number": n}
        value = value.get("number")
    if not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(value, UTC)


def queued_or_running(account: str) -> list[Job]:
    """squeue: the account's live jobs."""
    doc = json.loads(slurm("squeue", "--json", f"--account={account}"))
    return [
        Job(str(j["job_id"]), j["name"], str(j["job_state"]), _epoch(j.get("start_time")), None)
        for j in doc.get("jobs") or ()
        if str(j["job_state"]) in ("PENDING", "CONFIGURING", "RUNNING", "REQUEUED")
    ]


def accounted(account: str, since: datetime) -> list[Job]:
    """sacct: every job of the account since `since`, with Slurm's start and end times."""
    doc = json.loads(
        slurm(
            "sacct", "--json", "--allusers", f"--accounts={account}",
            f"--starttime={since.astimezone(UTC):%Y-%m-%dT%H:%M:%S}", "--endtime=now",
        )
    )  # fmt: skip
    out = []
    for j in doc.get("jobs") or ():
        state = j.get("state") or {}
        current = state.get("current") if isinstance(state, dict) else state
        time = j.get("time") or {}
        out.append(
            Job(
                str(j["job_id"]),
                j["name"],
                str(current),
                _epoch(time.get("start")),
                _epoch(time.get("end")),
                int(j.get("allocation_nodes") or 1),
            )
        )
    return out


def node_hours_by(jobs: Sequence[Job], at: datetime) -> float:
    """Node-hours the jobs had used by `at` (start → end, or → `at` for those still running)."""
    total = 0.0
    for j in jobs:
        if j.start is None or j.start >= at:
            continue
        end = min(j.end or at, at)
        total += max(0.0, (end - j.start).total_seconds()) * j.nodes / 3600
    return total


@dataclass
class BrokerProcess:
    """The broker's files and environment; `run()` starts `provisioner run`, `cli()` any other command."""

    directory: Path
    broker_id: str
    policy: str
    backends: str
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "policy.toml").write_text(self.policy)
        (self.directory / "backends.toml").write_text(self.backends)
        self.log = self.directory / "run.log"

    @property
    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")},
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "SLURM_CONF": str(SLURM_CONF),
            "PROVISIONER_LOG_LEVEL": "INFO",
            "PROVISIONER_STATE_DIR": str(self.directory / "state"),
            "PROVISIONER_BROKER_ID": self.broker_id,
            "PROVISIONER_POLICY_FILE": str(self.directory / "policy.toml"),
            "PROVISIONER_BACKENDS_FILE": str(self.directory / "backends.toml"),
        }

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", "from provisioner.cli import main; main()", *args],
            capture_output=True, text=True, timeout=120, check=False, env=self.env, cwd=self.directory,
        )  # fmt: skip
        if out.returncode != 0:
            raise AssertionError(f"provisioner {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def request(self, *args: str) -> str:
        """`request create …`; the request id it printed."""
        out = self.cli("request", "create", *args)
        return out.split()[0]

    @contextmanager
    def run(self, interval: float = 2.0) -> Iterator[subprocess.Popen[bytes]]:
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from provisioner.cli import main; main()", "run", "--interval", str(interval)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.directory,
            )  # fmt: skip
        try:
            # its first cycle has made the database (so `request create` does not race it for the schema)
            deadline = time.monotonic() + 60
            while "cycle.done" not in self.log.read_text(errors="replace") and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"provisioner run did not finish a cycle in 60 s:\n{self.tail()}")
                time.sleep(0.2)
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

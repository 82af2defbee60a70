"""The chaos harness: `provisioner run` subprocesses against moto_server behind the fault proxy,
killed and faulted at seeded random moments, judged from moto's own view of the instances.

A *lane* is one broker (one broker id, one database, one or two replicas). A *trial* is one chaos
event in a lane — a SIGKILL of the broker (or of the leading replica), the leader's lock connection
ended under it, a burst of EC2 faults (throttling, capacity, quota, malformed answers), a request
cancelled — followed by a check of the invariants that must hold at every moment:
* 0 doubled: no two live instances carry the same resource tag (or idempotency token);
* no heartbeat-carrying VM drained: every unit whose worker reports busy is still running;
and, at the end of the lane, once the faults stop and the broker has converged:
* 0 leaked: every live instance is tracked by a live row, every live row's instance is live;
* every VM of cancelled demand terminated;
* spend ≤ budget, with spend computed from what moto ran (launch to termination, catalog price).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3

from backends.base import TAG_BROKER, TAG_OFFERING, TAG_RESOURCE
from provisioner.admission import admit_spec
from provisioner.broker import Broker, build_broker
from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.heartbeats import Heartbeat, UnknownUnit, record
from provisioner.requests import BurstRequestSpec, cancel
from provisioner.settings import Settings
from tests.aws.faultproxy import Fault, FaultProxy

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
BUDGET = Decimal("25")  # the chaos policy's monthly budget for atlas
LIVE_EC2 = ("pending", "running", "stopping", "stopped", "shutting-down")
SPOT_QUOTA = "Max spot instance count exceeded"

FAULTS: dict[str, list[Fault]] = {
    "throttle": [Fault("RunInstances", 503, "RequestLimitExceeded", "Request limit exceeded.", times=3)],
    "capacity": [
        Fault("RunInstances", 500, "InsufficientInstanceCapacity", "no capacity", times=2, when="MarketType=spot")
    ],
    "quota": [Fault("RunInstances", 400, "MaxSpotInstanceCountExceeded", SPOT_QUOTA, when="MarketType=spot")],
    "malformed": [
        Fault("RunInstances", 200, body="<RunInstancesResponse><reservationId>r-1", times=1),
        Fault("DescribeInstances", 200, body="<<<not xml", times=1),
    ],
    "slow": [Fault("DescribeInstances", 503, "Unavailable", "try again", times=2, delay_s=0.3)],
}


def chaos_policy(tmp: Path) -> Path:
    """The example policy with a tiny idle drain (a wrongly idle-drained VM shows at once) and budget."""
    text = (ROOT / "examples" / "policy.toml").read_text()
    text = re.sub(r"idle_drain_minutes = [\d.]+", "idle_drain_minutes = 0.02", text)
    text = text.replace('monthly = "50000"', f'monthly = "{BUDGET}"', 1)
    path = tmp / "policy.toml"
    path.write_text(text)
    return path


def backends_file(tmp: Path, endpoint: str, amis: dict[str, str], credentials: Path) -> Path:
    images = ", ".join(f'{k} = "{v}"' for k, v in amis.items())
    path = tmp / "backends.toml"
    path.write_text(
        f"""
[aws]
kind = "aws"
profile = "broker"
credentials_file = "{credentials}"
endpoint_url = "{endpoint}"
max_attempts = 3
backoff_initial_s = 0.05
backoff_max_s = 0.2
read_timeout_s = 10
regions = [{{ region = "{REGION}", images = {{ {images} }} }}]
"""
    )
    return path


@dataclass
class Tally:
    trials: int = 0
    kills: int = 0
    lock_losses: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    heartbeats: int = 0
    instances: int = 0
    spend: Decimal = Decimal(0)
    violations: list[str] = field(default_factory=list)


class Lane:
    def __init__(
        self,
        *,
        seed: int,
        tmp: Path,
        moto: str,
        amis: dict[str, str],
        credentials: Path,
        key_id: str,
        secret: str,
        database_url: str | None = None,
        replicas: int = 1,
    ) -> None:
        self.rng = random.Random(seed)
        self.tmp = tmp
        self.moto = moto
        self.broker_id = f"chaos-{seed}-{os.getpid()}"
        self.proxy = FaultProxy(upstream=moto).start()
        self.replicas = replicas
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "AWS_"))}
        state = tmp / "state"
        self.env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PROVISIONER_STATE_DIR": str(state),
                "PROVISIONER_BROKER_ID": self.broker_id,
                "PROVISIONER_BACKENDS_FILE": str(backends_file(tmp, self.proxy.url, amis, credentials)),
                "PROVISIONER_POLICY_FILE": str(chaos_policy(tmp)),
                "PROVISIONER_LOG_LEVEL": "WARNING",
                "PROVISIONER_STANDBY_POLL_SECONDS": "0.5",
                "PROVISIONER_LEADER_LEASE_SECONDS": "4",
                "PROVISIONER_BATCH_IDLE_SECONDS": "0.1",
                "PROVISIONER_BATCH_MAX_SECONDS": "0.5",
            }
        )
        if database_url:
            self.env["PROVISIONER_DATABASE_URL"] = database_url
        settings = Settings(
            state_dir=state,
            database_url=database_url,
            broker_id=self.broker_id,
            backends_file=Path(self.env["PROVISIONER_BACKENDS_FILE"]),
            policy_file=Path(self.env["PROVISIONER_POLICY_FILE"]),
        )
        self.broker: Broker = build_broker(settings)
        self.ec2 = boto3.client(
            "ec2", region_name=REGION, endpoint_url=moto, aws_access_key_id=key_id, aws_secret_access_key=secret
        )
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * replicas
        self.logs = [tmp / f"replica-{i}.log" for i in range(replicas)]
        self.requests: dict[str, str] = {}  # request id -> "steady" | "cancel" | "cancelled"
        self.busy_units: set[str] = set()  # resource ids whose worker reported busy
        self.tally = Tally()
        self._last_beat = 0.0
        # Every kind of fault at least once, then a seeded mix with kills, cancels and new demand.
        kinds = ["kill", "kill", "kill", "cancel", "demand"] + (["lock", "kill", "kill"] if replicas > 1 else [])
        self.schedule = [f"fault:{k}" for k in sorted(FAULTS)]
        self.rng.shuffle(self.schedule)
        self.schedule += ["lock"] if replicas > 1 else []
        self.schedule += ["cancel", "demand"]  # popped from the end: new demand first, cancelled later
        self.mix = [*kinds, "fault"]

    # --- processes ----------------------------------------------------------------------------

    def start(self, i: int) -> None:
        log = self.logs[i].open("ab")
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "provisioner.cli", "run", "--interval", "1"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
        )

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        self.procs[i] = None

    def stop_all(self) -> None:
        for i in range(self.replicas):
            self.kill(i)
        self.proxy.stop()
        self.broker.db.dispose()

    def ensure_running(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                if proc is not None and proc.returncode not in (0, -signal.SIGKILL):
                    self.tally.violations.append(f"replica {i} exited with {proc.returncode}: {self.tail(i)}")
                self.start(i)

    def tail(self, i: int) -> str:
        with contextlib.suppress(OSError):
            return self.logs[i].read_text(errors="replace")[-1500:]
        return ""

    # --- demand and heartbeats -----------------------------------------------------------------

    def request(self, kind: str, cores: int) -> None:
        spec = BurstRequestSpec(experiment="atlas", cores=cores, duration_hours=2)
        admitted = admit_spec(self.broker, spec)
        if admitted.admission.accepted:
            self.requests[admitted.row.id] = kind

    def cancel_one(self) -> None:
        open_ = [rid for rid, kind in self.requests.items() if kind == "cancel"]
        if open_:
            rid = self.rng.choice(open_)
            cancel(self.broker.db, rid)
            self.requests[rid] = "cancelled"
            self.tally.cancelled += 1

    def heartbeat(self) -> None:
        """The workers of the steady request's units report busy (as a pilot would, every minute)."""
        now = time.monotonic()
        if now - self._last_beat < 1.0:
            return
        self._last_beat = now
        steady = {rid for rid, kind in self.requests.items() if kind == "steady"}
        for row in self.broker.store.resources(states=[ResourceState.PROVISIONING, ResourceState.RUNNING]):
            if row.request_id in steady:
                with contextlib.suppress(UnknownUnit):
                    record(self.broker.store, Heartbeat(resource_id=row.id, busy=True, running_jobs=1))
                    self.busy_units.add(row.id)
                    self.tally.heartbeats += 1

    # --- chaos -----------------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        self.proxy.faults = [Fault(**{**f.__dict__}) for f in FAULTS[kind]]
        self.tally.faults[kind] += 1

    def lose_lock(self) -> None:
        """The leader's lock connection ends under it (network cut, PostgreSQL restart of the session)."""
        from sqlalchemy import text

        with self.broker.db.connect() as conn:
            pid = conn.execute(
                text("SELECT holder_pid FROM leader_lease WHERE broker_id = :b"), {"b": self.broker_id}
            ).scalar()
            if pid is not None:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                conn.commit()
                self.tally.lock_losses += 1

    def cycles(self) -> int:
        from sqlalchemy import text

        with self.broker.db.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM events WHERE kind = 'cycle.finished'")).scalar_one())

    def wait_cycles(self, n: int, timeout: float = 45.0) -> None:
        """Until the broker has finished `n` more cycles (it is up and acting), sending heartbeats."""
        target = self.cycles() + n
        deadline = time.monotonic() + timeout
        while self.cycles() < target and time.monotonic() < deadline:
            self.heartbeat()
            time.sleep(0.1)

    def trial(self, *, settle: float) -> None:
        """One chaos event at a random moment of an acting broker, then the always-true invariants."""
        self.ensure_running()
        self.wait_cycles(1)
        # Every other trial takes the next scheduled event (so each kind occurs), the others a random one.
        scheduled = self.schedule and self.tally.trials % 2 == 0
        event = self.schedule.pop() if scheduled else self.rng.choice(self.mix)
        if event.startswith("fault"):
            kind = event.partition(":")[2] or self.rng.choice(sorted(FAULTS))
            self.inject(kind)
        elif event == "cancel":
            self.cancel_one()
        elif event == "demand":
            self.request("cancel", self.rng.choice([8, 16, 32]))
        if event == "kill":
            kill_at = time.monotonic() + self.rng.uniform(0.0, settle)
            while time.monotonic() < kill_at:
                self.heartbeat()
                time.sleep(0.05)
            victim = self.rng.randrange(self.replicas)
            self.kill(victim)
            self.tally.kills += 1
            self.start(victim)
        elif event == "lock":
            self.lose_lock()
            self.wait_cycles(1)
        else:
            self.wait_cycles(1)
        self.tally.trials += 1
        self.check_always()

    # --- moto's view ------------------------------------------------------------------------------

    def instances(self) -> list[dict[str, Any]]:
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{TAG_BROKER}", "Values": [self.broker_id]}]
        )
        return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]

    @staticmethod
    def tags(instance: dict[str, Any]) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}

    def check_always(self) -> None:
        live = [i for i in self.instances() if i["State"]["Name"] in LIVE_EC2]
        per_resource = Counter(self.tags(i).get(TAG_RESOURCE) for i in live)
        per_token = Counter(self.tags(i).get("provisioner-token") for i in live)
        for rid, n in per_resource.items():
            if n > 1:
                self.tally.violations.append(f"doubled: {n} live instances for resource {rid}")
        for token, n in per_token.items():
            if token and n > 1:
                self.tally.violations.append(f"doubled: {n} live instances with one token")
        alive = {self.tags(i).get(TAG_RESOURCE) for i in live}
        for rid in self.busy_units:
            row = self.broker.store.get(rid)
            cancelled = row is not None and self.requests.get(row.request_id or "") == "cancelled"
            if rid not in alive and not cancelled:
                state = row.state if row else "?"
                self.tally.violations.append(f"busy unit {rid} is gone from moto (row {state})")

    def converge(self, timeout: float) -> None:
        """No more faults or kills: the broker(s) run until moto and the table agree, or time runs out."""
        self.proxy.faults = []
        self.ensure_running()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.heartbeat()
            if not self.final_problems():
                return
            time.sleep(0.5)

    def final_problems(self) -> list[str]:
        problems: list[str] = []
        instances = self.instances()
        live = {self.tags(i).get(TAG_RESOURCE): i for i in instances if i["State"]["Name"] in LIVE_EC2}
        rows = {r.id: r for r in self.broker.store.resources()}
        for rid, inst in live.items():
            row = rows.get(rid or "")
            if row is None or ResourceState(row.state) not in LIVE_STATES:
                problems.append(f"leaked: instance {inst['InstanceId']} ({rid}) row {row.state if row else None}")
                continue
            if self.requests.get(row.request_id or "") == "cancelled":
                problems.append(f"cancelled demand still running: {inst['InstanceId']}")
        for row in rows.values():
            state = ResourceState(row.state)
            if state in (ResourceState.PROVISIONING, ResourceState.RUNNING) and row.id not in live:
                problems.append(f"lost track: row {row.id} {state} has no live instance")
            if state == ResourceState.REQUESTED:
                problems.append(f"intent {row.id} still unresolved")
        return problems

    def spend(self) -> Decimal:
        """What moto ran, priced at the catalog price of each instance's offering."""
        prices = {oid: o.price_per_hour for oid, o in self.broker.offerings.items()}
        now = datetime.now(UTC)
        total = Decimal(0)
        for inst in self.instances():
            launched = inst["LaunchTime"].astimezone(UTC)
            end = now
            if inst["State"]["Name"] == "terminated":
                m = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", inst.get("StateTransitionReason", ""))
                if m:
                    end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            seconds = Decimal(max(0.0, (end - launched).total_seconds()))
            total += prices.get(self.tags(inst).get(TAG_OFFERING, ""), Decimal(0)) * seconds / 3600
        return total

    def finish(self, converge_timeout: float) -> Tally:
        self.converge(converge_timeout)
        self.tally.violations.extend(self.final_problems())
        self.check_always()
        self.tally.instances = len(self.instances())
        self.tally.spend = self.spend()
        if self.tally.spend > BUDGET:
            self.tally.violations.append(f"spend {self.tally.spend} > budget {BUDGET}")
        return self.tally

"""Chaos: `provisioner run` under seeded SIGKILLs, replica kills, lock loss and EC2 faults (throttling,
capacity, quota, malformed answers), judged from moto's own view of the instances.

Two lanes run side by side: one broker on SQLite (kills restart it), two replicas on PostgreSQL
(kills and lock loss make the stand-by take over). CHAOS_SQLITE_TRIALS and CHAOS_PG_TRIALS set the
trials (30 together by default); `benchmarks/chaos.py` runs many more with other seeds."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.aws.conftest import KEY_ID, SECRET
from tests.chaos.harness import Lane, Tally

pytestmark = pytest.mark.moto

SQLITE_TRIALS = int(os.environ.get("CHAOS_SQLITE_TRIALS", "12"))
PG_TRIALS = int(os.environ.get("CHAOS_PG_TRIALS", "18"))
SETTLE_S = float(os.environ.get("CHAOS_SETTLE_S", "1.5"))


def run_lane(lane: Lane, trials: int, out: dict[str, Tally]) -> None:
    try:
        lane.request("steady", 16)
        if not lane.requests:
            lane.tally.violations.append("the chaos policy did not admit the steady request")
            return
        for _ in range(trials):
            lane.trial(settle=SETTLE_S)
        lane.finish(converge_timeout=60)
    except Exception as exc:  # reported with the lane's tally, never lost in a thread
        lane.tally.violations.append(f"harness error: {type(exc).__name__}: {exc}")
    finally:
        lane.stop_all()
        out[lane.broker_id] = lane.tally


def test_kills_lock_loss_and_ec2_faults_never_leak_double_or_drain_working_vms(
    tmp_path: Path, moto: str, amis: dict[str, str], credentials_file: Path, pg_url: str
) -> None:
    common = {"moto": moto, "amis": amis, "credentials": credentials_file, "key_id": KEY_ID, "secret": SECRET}
    (tmp_path / "sqlite").mkdir()
    (tmp_path / "pg").mkdir()
    lanes = [
        (Lane(seed=11, tmp=tmp_path / "sqlite", **common), SQLITE_TRIALS),  # type: ignore[arg-type]
        (Lane(seed=23, tmp=tmp_path / "pg", database_url=pg_url, replicas=2, **common), PG_TRIALS),  # type: ignore[arg-type]
    ]
    tallies: dict[str, Tally] = {}
    t0 = time.monotonic()
    threads = [threading.Thread(target=run_lane, args=(lane, n, tallies)) for lane, n in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    trials = sum(t.trials for t in tallies.values())
    for name, t in tallies.items():
        print(
            f"\n{name}: {t.trials} trials, {t.kills} kills, {t.lock_losses} lock losses, faults {dict(t.faults)}, "
            f"{t.cancelled} cancelled, {t.heartbeats} heartbeats, {t.instances} instances, spend ${t.spend:.6f}"
        )
    print(f"chaos: {trials} trials in {wall:.0f} s")
    problems = [f"{name}: {v}" for name, t in tallies.items() for v in t.violations]
    assert not problems, "\n".join(problems[:30]) + "\n" + "\n".join(lane.tail(0) for lane, _ in lanes)
    assert trials == SQLITE_TRIALS + PG_TRIALS

"""Runs engine cycles in a separate process for the crash tests; `PROVISIONER_CRASH_AT` kills it for real."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from backends.simulated import SimulatedCloud
from provisioner.clock import SystemClock
from provisioner.db import open_database
from provisioner.store import Store
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering

BROKER = "crash-broker"
OFFERING = offering("m1", startup_seconds=0)


async def run(db_url: str, state: Path, n_jobs: int, cycles: int) -> dict[str, object]:
    db = open_database(db_url)
    clock = SystemClock()
    store = Store(db, clock, BROKER)
    cloud = SimulatedCloud("cloud", [OFFERING], clock, broker_id=BROKER, state_file=state)
    engine = build_engine(store, {"cloud": cloud}, StaticSource(jobs=jobs("atlas", n_jobs)))
    created: list[str] = []
    resumed: list[str] = []
    for _ in range(cycles):
        report = await engine.run_cycle()
        created += report.act.created
        resumed += report.act.resumed
    db.dispose()
    return {"created": created, "resumed": resumed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.db, args.state, args.jobs, args.cycles))))


if __name__ == "__main__":
    main()

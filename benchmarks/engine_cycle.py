"""Benchmark: engine cycle cost on simulated backends and SQLite — provisioning per unit, steady-state cycles.

Run: `python -m benchmarks.engine_cycle` (writes benchmarks/results/engine_cycle.json and .md).
The baseline is the same measurement on the smaller fleet in the same run; the ratio per unit
shows whether a cycle scales linearly with the fleet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from backends.simulated import SimulatedCloud
from provisioner.clock import SimulatedClock
from provisioner.db import open_database
from provisioner.store import Store
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs, offering

RESULTS = Path(__file__).parent / "results"


async def measure(units: int, workdir: Path) -> dict[str, Any]:
    db = open_database(f"sqlite:///{workdir / f'bench-{units}.db'}")
    clock = SimulatedClock()
    store = Store(db, clock, "bench")
    cloud = SimulatedCloud("cloud", [offering("m1", startup_seconds=0)], clock, broker_id="bench")
    source = StaticSource(jobs=jobs("atlas", units))
    engine = build_engine(store, {"cloud": cloud}, source)
    t0 = time.perf_counter()
    first = await engine.run_cycle()
    provision_s = time.perf_counter() - t0
    assert len(first.act.created) == units
    for row in store.resources():
        cloud.set_busy(row.id, True)
    steady = []
    for _ in range(3):
        clock.advance(60)
        t0 = time.perf_counter()
        report = await engine.run_cycle()
        steady.append(time.perf_counter() - t0)
        assert not report.act.created
    db.dispose()
    best = min(steady)
    return {
        "units": units,
        "first_cycle_seconds": round(provision_s, 4),
        "provision_ms_per_unit": round(1000 * provision_s / units, 3),
        "steady_cycle_seconds": round(best, 4),
        "steady_ms_per_unit": round(1000 * best / units, 3),
    }


async def main() -> None:
    # Measure the engine, not the console: info-level lines per transition are the app's choice.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        base = await measure(50, Path(tmp))
        big = await measure(500, Path(tmp))
    result = {
        "benchmark": "engine_cycle",
        "database": "sqlite (WAL)",
        "baseline": base,
        "measured": big,
        "ratio_provision_per_unit": round(big["provision_ms_per_unit"] / base["provision_ms_per_unit"], 3),
        "ratio_steady_per_unit": round(big["steady_ms_per_unit"] / base["steady_ms_per_unit"], 3),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_cycle.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "engine_cycle.md").write_text(
        "# Engine cycle (simulated cloud, SQLite)\n\n"
        f"- provisioning: {big['provision_ms_per_unit']} ms per unit at {big['units']} units "
        f"(baseline {base['provision_ms_per_unit']} ms at {base['units']}; ratio {result['ratio_provision_per_unit']})\n"
        f"- steady cycle: {big['steady_cycle_seconds']} s for {big['units']} live units, "
        f"{big['steady_ms_per_unit']} ms per unit (ratio to baseline {result['ratio_steady_per_unit']})\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

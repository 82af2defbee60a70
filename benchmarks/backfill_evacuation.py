"""Benchmark: how fast owner work gets a node that backfill jobs fill, on the real Slurm test cluster.

Three ways, measured in the same run: `slurm_preemption` (submit the owner job and let
preempt/partition_prio cancel the backfill jobs), `evacuate_then_submit` (the broker's
`SlurmBackfillBackend.evacuate(nodes)` cancels them while the owner job is submitted), and
`engine_owner_reclaim` (the owner job is submitted, then the engine's step runs once:
`evacuate_for_owners()` finds the waiting owner job in squeue and evacuates its node — Slurm's own
preemption races it, as on a real site). Times are from the owner's sbatch to the owner job RUNNING
(squeue polled every 50 ms) and to the last backfill job ended. Needs `scripts/slurm-cluster.sh
start`. Usage:

    python benchmarks/backfill_evacuation.py [--repetitions 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from backends.base import ProvisionRequest
from backends.slurm.backfill import SlurmBackfillBackend
from backends.slurm.client import JobSpec, JobState
from backends.slurm.commands import CommandsClient
from provisioner.domain import Arch, Market, Offering

CLUSTER_DIR = Path(os.environ.get("PROVISIONER_SLURM_DIR", "/tmp/provisioner-slurm"))
RESULTS = Path(__file__).parent / "results"
NODE = socket.gethostname().split(".")[0]
POLL = 0.05
OFFERING = Offering(
    id="backfill:ci:scavenger-2c:backfill", backend="ci-backfill", provider="backfill", region="scavenger",
    instance_type="slot2", family="backfill:ci", market=Market.BACKFILL, cores=2, memory_gb=4, arch=Arch.X86_64,
    price_per_hour=Decimal(0), hs23_per_core=10.0,
)  # fmt: skip


async def wait(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        await asyncio.sleep(POLL)


async def node_idle(client: CommandsClient) -> bool:
    return any(n.name == NODE and n.alloc_cpus == 0 and n.state == "idle" for n in await client.nodes())


async def fill(pool: SlurmBackfillBackend, run: str) -> list[str]:
    ids = []
    for n in range(await pool.free_slots()):
        unit = await pool.provision(
            ProvisionRequest(
                resource_id=f"bench{n}-{run}", offering=OFFERING, idempotency_token=f"bench{n}-{run}",
                broker_id=pool.jobs.broker_id, walltime_hours=0.25,
            )
        )  # fmt: skip
        ids.append(unit.provider_id)

    async def running() -> bool:
        states = {s.job.job_id: s.job.state for s in await pool.backfill_jobs()}
        return all(states.get(i) is JobState.RUNNING for i in ids)

    await wait(running)
    return ids


async def one_run(client: CommandsClient, mode: str, run: str) -> dict[str, float]:
    await wait(lambda: node_idle(client))
    pool = SlurmBackfillBackend("bench", client, OFFERING, broker_id=f"bench-{run}", account="lsst")
    ids = await fill(pool, run)
    owner_spec = JobSpec(
        name=f"bench-owner.{run}", script="#!/bin/bash\nsleep 300\n", partition="owner",
        time_limit_minutes=5, account="atlas", cores=8, output="/dev/null",
    )  # fmt: skip
    t0 = time.monotonic()
    if mode == "slurm_preemption":
        owner = await client.submit(owner_spec)
    elif mode == "engine_owner_reclaim":
        owner = await client.submit(owner_spec)
        await pool.evacuate_for_owners()
    else:
        _, owner = await asyncio.gather(pool.evacuate([NODE]), client.submit(owner_spec))
    owner_started = backfill_gone = None
    while owner_started is None or backfill_gone is None:
        jobs = {j.job_id: j for j in await client.jobs()}
        elapsed = time.monotonic() - t0
        if owner_started is None and jobs[owner].state is JobState.RUNNING:
            owner_started = elapsed
        if backfill_gone is None and all(jobs[i].state.finished for i in ids):
            backfill_gone = elapsed
        if elapsed > 120:
            raise TimeoutError(f"{mode}: owner job {owner} did not start")
        await asyncio.sleep(POLL)
    await client.cancel(owner)
    return {"owner_started_s": owner_started, "backfill_gone_s": backfill_gone}


def summary(values: list[float]) -> dict[str, float | list[float]]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "samples": [round(v, 3) for v in values],
        "median_s": round(statistics.median(values), 3),
        "p95_s": round(p95, 3),
        "min_s": round(ordered[0], 3),
        "max_s": round(ordered[-1], 3),
    }


async def main(repetitions: int) -> dict[str, object]:
    client = CommandsClient(slurm_conf=str(CLUSTER_DIR / "etc" / "slurm.conf"))
    modes = ("slurm_preemption", "evacuate_then_submit", "engine_owner_reclaim")
    samples: dict[str, dict[str, list[float]]] = {
        m: {"owner_started_s": [], "backfill_gone_s": []} for m in modes
    }
    for rep in range(repetitions):
        for mode in modes:  # interleaved, so drift in the cluster hits both alike
            result = await one_run(client, mode, f"{rep}-{mode[:4]}-{int(time.time())}")
            for key, value in result.items():
                samples[mode][key].append(value)
            print(f"rep {rep} {mode}: {result}")
    version = subprocess.run(
        ["sinfo", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out: dict[str, object] = {
        "benchmark": "backfill_evacuation",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "slurm": version,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": "1 node, 8 configured CPUs filled by 4 backfill jobs x 2 cores in scavenger (PriorityTier=1, "
        "PreemptMode=CANCEL); owner job of 8 cores in owner (PriorityTier=10); squeue polled every 50 ms",
        "repetitions": repetitions,
        "modes": {m: {k: summary(v) for k, v in samples[m].items()} for m in modes},
    }
    base = statistics.median(samples["slurm_preemption"]["owner_started_s"])
    alt = statistics.median(samples["evacuate_then_submit"]["owner_started_s"])
    out["ratio_owner_start_evacuate_vs_preemption"] = round(alt / base, 3) if base > 0 else None
    engine = statistics.median(samples["engine_owner_reclaim"]["owner_started_s"])
    out["ratio_owner_start_engine_vs_preemption"] = round(engine / base, 3) if base > 0 else None
    await client.close()
    return out


def write(result: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backfill_evacuation.json").write_text(json.dumps(result, indent=2) + "\n")
    modes = result["modes"]
    assert isinstance(modes, dict)
    lines = [
        "# Backfill evacuation on the Slurm test cluster",
        "",
        f"{result['slurm']}, {result['repetitions']} repetitions, measured {result['measured_at']}.",
        "",
        "| mode | owner job running: median / p95 (s) | backfill gone: median / p95 (s) |",
        "|---|---|---|",
    ]
    for mode, stats in modes.items():
        o, b = stats["owner_started_s"], stats["backfill_gone_s"]
        lines.append(f"| {mode} | {o['median_s']} / {o['p95_s']} | {b['median_s']} / {b['p95_s']} |")
    lines += [
        "",
        f"Ratio of medians (evacuate / Slurm preemption), owner start: {result['ratio_owner_start_evacuate_vs_preemption']}",
        f"Ratio of medians (engine owner reclaim / Slurm preemption), owner start: "
        f"{result['ratio_owner_start_engine_vs_preemption']}",
        "",
    ]
    (RESULTS / "backfill_evacuation.md").write_text("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()
    write(asyncio.run(main(args.repetitions)))
    print((RESULTS / "backfill_evacuation.md").read_text())

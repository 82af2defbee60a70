"""The MILP's time limit with and without the guard process (`provisioner/planner/deadline.py`).

The instance: forced `milp` on nasa-ipsc/6000/budget of `benchmarks/planner_gap.py`, whose 4,269-pair
pruned MILP has a cost phase limited to 2 s (`MILP_TIME_LIMIT`) that HiGHS 1.16 overran by minutes,
inside its presolve (`HPresolve::strengthenInequalities`, rerun at a root restart). Whether it overruns
depends on how far HiGHS got when its clock struck, so each run is a fresh process: RUNS with the guard,
then RUNS without it (every HiGHS run in the planning process, as before the guard), each killed after
CEILING seconds. Reported per run: the seconds `plan()` took, the plan's solver (how it ended), the MILP
phases the guard killed; or that the run was killed at the ceiling.

Run: `python -m benchmarks.time_limit_guard` → benchmarks/results/time_limit_guard.json (+ .md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INSTANCE = "nasa-ipsc/6000/budget"
RUNS = 3
CEILING = 120.0  # seconds a run may take before it is killed (the guarded plan takes about 10)


def child(guarded: bool) -> None:
    """One run: builds the instance, plans it once, prints one JSON line."""
    from benchmarks.planner_gap import SIZES
    from benchmarks.trace_instances import build_instances
    from provisioner.catalog import load_catalog
    from provisioner.planner import OfferingColumns, deadline, highs, plan

    if not guarded:
        deadline.GUARD.run = highs.run  # type: ignore[method-assign]
    instances = build_instances(load_catalog().offerings, sizes=SIZES, lp_alone=True)
    inst = next(i for i in instances if i.name == INSTANCE)
    cols = OfferingColumns.from_offerings(inst.offerings)
    start = time.perf_counter()
    p = plan(inst.groups, cols, (), inst.constraints, method="milp")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "solver": p.solver, "killed": deadline.GUARD.killed}))


def one_run(guarded: bool) -> dict[str, object]:
    mode = "guarded" if guarded else "unguarded"
    cmd = [sys.executable, "-m", "benchmarks.time_limit_guard", "--child", mode]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CEILING, check=True)
    except subprocess.TimeoutExpired:
        return {
            "mode": mode,
            "seconds": None,
            "solver": f"killed at the {CEILING:.0f} s ceiling",
            "killed": None,
        }
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"mode": mode, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=("guarded", "unguarded"), help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "guarded")
        return
    rows = []
    for guarded in (True, False):
        for _ in range(args.runs):
            row = one_run(guarded)
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "time_limit_guard.json").write_text(json.dumps({"instance": INSTANCE, "runs": rows}, indent=2))
    lines = [
        f"# MILP time limit with and without the guard process: forced milp on {INSTANCE}",
        "",
        "| run | mode | plan() seconds | solver | MILP phases the guard killed |",
        "|---|---|---|---|---|",
    ]
    for k, row in enumerate(rows, 1):
        secs = "—" if row["seconds"] is None else f"{float(row['seconds']):.2f}"  # type: ignore[arg-type]
        killed = "—" if row["killed"] is None else str(row["killed"])
        lines.append(f"| {k} | {row['mode']} | {secs} | {row['solver']} | {killed} |")
    (RESULTS / "time_limit_guard.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

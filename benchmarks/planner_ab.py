"""The planner at scale against an earlier commit, on this machine at the same moments: A/B by alternation.

A shared machine's speed moves by 2× within minutes, so a time measured in one run says little against a
time measured in another. This plans the instances of `benchmarks/planner_scale.py` (720 groups from
1,000,000 jobs with its fleet, or its 5,000 groups without one) with the code of this checkout and with
the code of `--base` (a git worktree of that commit), alternating between the two round by round, each
round a fresh process per side planning RUNS times with 2 kept workers, grouping included for 720 groups
as planner_scale times it. Reported: per side, the median of the rounds' medians of the wall time per
phase, the ratio of the totals, and each side's objective (the same objective: the same plan).

Run: `python -m benchmarks.planner_ab --base f258080` → benchmarks/results/planner_ab.json (+ .md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES = ("720", "5000")


@dataclass(frozen=True, slots=True)
class Side:
    """One side of one round: median seconds per phase over its plans, the plan's objective and solver."""

    median_seconds: dict[str, float]
    objective: float
    solver: str


def child(case: str, runs: int) -> None:
    """One side of a round, in a process whose PYTHONPATH holds the side's checkout first: its own
    `benchmarks.planner_scale` and `provisioner`. Prints one JSON line."""
    from benchmarks import planner_scale as scale
    from provisioner.catalog import load_catalog
    from provisioner.grouping import group_table
    from provisioner.planner import OfferingColumns, plan
    from provisioner.planner.workers import Workers

    offerings = [*load_catalog().offerings, *scale.hpc_offerings()]
    columns = OfferingColumns.from_offerings(offerings)
    table = scale.generate_jobs(scale.JOBS)
    constraints = scale.constraints_for(offerings)
    groups = group_table(table)
    fleet = scale.fleet_for(offerings, groups) if case == "720" else []
    many = scale.many_groups(groups, scale.MANY_GROUPS) if case == "5000" else []
    pool = Workers(scale.WORKERS)
    timings: list[dict[str, float]] = []
    objective, solver = 0.0, ""
    try:
        for _ in range(runs):
            t: dict[str, float] = {}
            wall = time.perf_counter()
            if case == "720":
                groups = group_table(table)
                t["grouping"] = time.perf_counter() - wall
                result = plan(groups, columns, fleet, constraints, timings=t, workers=pool)
            else:
                result = plan(many, columns, (), constraints, timings=t, workers=pool)
            t["total"] = time.perf_counter() - wall
            timings.append(t)
            objective, solver = result.objective, result.solver
    finally:
        pool.close()
    median = {k: statistics.median(r.get(k, 0.0) for r in timings) for k in timings[0]}
    print(json.dumps({"median_seconds": median, "objective": objective, "solver": solver}))


def side(checkout: Path, case: str, runs: int) -> Side:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", case, "--runs", str(runs)],
        cwd=tempfile.gettempdir(),  # not a checkout: its packages come from PYTHONPATH alone
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return Side(
        {k: float(v) for k, v in found["median_seconds"].items()},
        float(found["objective"]),
        str(found["solver"]),
    )


def summarise(rounds: list[Side]) -> dict[str, object]:
    keys = rounds[0].median_seconds.keys()
    return {
        "median_seconds": {k: statistics.median(r.median_seconds.get(k, 0.0) for r in rounds) for k in keys},
        "round_totals": [r.median_seconds["total"] for r in rounds],
        "objective": rounds[-1].objective,
        "solver": rounds[-1].solver,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", help="the commit to compare with (a git revision)")
    parser.add_argument("--cases", default=",".join(CASES), help="720, 5000 or both (comma-separated)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="plans per side and round (their median is kept)")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.runs)
        return
    if not args.base:
        parser.error("--base: the commit to compare with is required")
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            parser.error(f"--cases: unknown case {c!r}, expected some of {CASES}")
    git = {"cwd": ROOT, "capture_output": True, "text": True}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True, **git).stdout.strip()  # type: ignore[call-overload]
    lines = [
        "# Planner A/B",
        "",
        f"{head} (head) against {args.base} (base), {args.rounds} rounds alternating, {args.runs} plans per side "
        "and round; seconds are wall-clock medians of the rounds' medians, grouping included for 720 groups.",
        "",
        "| case | base s (each round) | head s (each round) | head / base | objectives (base, head) |",
        "|---|---|---|---|---|",
    ]
    report: dict[str, object] = {"base": args.base, "head": head, "rounds": args.rounds, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], check=True, **git)  # type: ignore[call-overload]
        try:
            for case in cases:
                found: dict[str, list[Side]] = {"base": [], "head": []}
                for _ in range(args.rounds):
                    found["base"].append(side(base, case, args.runs))
                    found["head"].append(side(ROOT, case, args.runs))
                b, h = summarise(found["base"]), summarise(found["head"])
                ratio = statistics.median(
                    r.median_seconds["total"] for r in found["head"]
                ) / statistics.median(r.median_seconds["total"] for r in found["base"])
                report[case] = {"base": b, "head": h, "head_over_base": ratio}
                lines.append(
                    f"| {case} groups | {statistics.median(b['round_totals']):.3f} "  # type: ignore[arg-type]
                    f"({', '.join(f'{t:.2f}' for t in b['round_totals'])}) "  # type: ignore[attr-defined]
                    f"| {statistics.median(h['round_totals']):.3f} "  # type: ignore[arg-type]
                    f"({', '.join(f'{t:.2f}' for t in h['round_totals'])}) "  # type: ignore[attr-defined]
                    f"| {ratio:.2f} | {b['objective']:,.2f}, {h['objective']:,.2f} |"
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], check=False, **git)  # type: ignore[call-overload]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "planner_ab.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "planner_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

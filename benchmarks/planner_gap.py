"""How close the fast planner gets to the exact MILP: relative objective gap on many random instances.

Instance families (fixed seeds):
* small:  4 groups × 10 random offerings (all markets, GPUs, quotas, budgets, caps, fleet);
* medium: 12 groups × 60 random offerings;
* catalog: 20 demand groups from the 1M-job workload (jobs scaled down 100×) × 300 offerings
  sampled from the bundled catalog plus the HPC allocations and backfill pool.
For each, the fast planner (`method="auto"`: pruned MILP when small, else LP relaxation + repair),
the LP path forced (`method="lp"`) and the exact unpruned MILP (`method="exact"`) plan the same
instance. The objective is USD of money plus allocation value; both plans are lexicographic (first
serve as much valuable work as the limits allow), so the gap is reported on instances where both
serve the same work, and service shortfalls are counted separately.

Run: `python -m benchmarks.planner_gap` → benchmarks/results/planner_gap.json (+ .md).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.planner_workload import constraints_for, generate_jobs, hpc_offerings
from provisioner.domain import DemandGroup, Plan
from provisioner.grouping import group_table
from provisioner.planner import plan
from tests.planner.instances import Instance, random_instance

RESULTS = Path(__file__).resolve().parent / "results"


def served_work(groups: list[DemandGroup], p: Plan) -> float:
    work = {g.id: g.hs23_hours_per_job for g in groups}
    return sum(it.jobs * work[it.group_id] for it in p.items)


def catalog_instances(count: int) -> list[Instance]:
    from provisioner.catalog import load_catalog

    catalog = load_catalog().offerings
    workload = group_table(generate_jobs(200_000, seed=7))
    out = []
    for seed in range(count):
        rng = random.Random(seed)
        offerings = [*rng.sample(list(catalog), 300), *hpc_offerings()]
        groups = [replace(g, jobs=max(1, g.jobs // 100)) for g in rng.sample(workload, 20)]
        out.append(Instance(groups, offerings, [], constraints_for(offerings)))
    return out


def compare(inst: Instance) -> dict[str, float | str | bool]:
    row: dict[str, float | str | bool] = {}
    exact_start = time.perf_counter()
    exact = plan(inst.groups, inst.offerings, inst.fleet, inst.constraints, method="exact")
    row["exact_seconds"] = time.perf_counter() - exact_start
    exact_work = served_work(inst.groups, exact)
    for method in ("auto", "lp"):
        start = time.perf_counter()
        fast = plan(inst.groups, inst.offerings, inst.fleet, inst.constraints, method=method)
        row[f"{method}_seconds"] = time.perf_counter() - start
        row[f"{method}_solver"] = fast.solver
        work = served_work(inst.groups, fast)
        same = abs(work - exact_work) <= 1e-9 * max(1.0, exact_work)
        row[f"{method}_same_service"] = same
        row[f"{method}_service_shortfall"] = (exact_work - work) / exact_work if exact_work > 0 else 0.0
        row[f"{method}_gap"] = (
            (fast.objective - exact.objective) / max(exact.objective, 1e-9) if same else float("nan")
        )
    return row


def summarise(rows: list[dict[str, float | str | bool]], method: str) -> dict[str, float | int]:
    gaps = sorted(float(r[f"{method}_gap"]) for r in rows if r[f"{method}_same_service"])
    shortfalls = [float(r[f"{method}_service_shortfall"]) for r in rows]

    def pct(q: float) -> float:
        return gaps[min(len(gaps) - 1, int(q * len(gaps)))] if gaps else float("nan")

    return {
        "instances": len(rows),
        "same_service": len(gaps),
        "gap_mean": statistics.fmean(gaps) if gaps else float("nan"),
        "gap_p95": pct(0.95),
        "gap_max": gaps[-1] if gaps else float("nan"),
        "service_shortfall_mean": statistics.fmean(shortfalls),
        "service_shortfall_max": max(shortfalls),
        "seconds_mean": statistics.fmean(float(r[f"{method}_seconds"]) for r in rows),
        "exact_seconds_mean": statistics.fmean(float(r["exact_seconds"]) for r in rows),
    }


def main() -> None:
    families = {
        "small": [random_instance(seed, groups=4, offerings=10) for seed in range(200)],
        "medium": [random_instance(10_000 + seed, groups=12, offerings=60, fleet=6) for seed in range(40)],
        "catalog": catalog_instances(12),
    }
    report: dict[str, object] = {
        "gap_definition": "(fast - exact) / exact objective, instances serving the same work"
    }
    lines = [
        "# Planner gap vs the exact MILP",
        "",
        "| family | method | instances | same service | gap mean | gap p95 | gap max | shortfall mean | fast s | exact s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, instances in families.items():
        rows = [compare(inst) for inst in instances]
        report[name] = {m: summarise(rows, m) for m in ("auto", "lp")}
        for m in ("auto", "lp"):
            s = report[name][m]  # type: ignore[index]
            lines.append(
                f"| {name} | {m} | {s['instances']} | {s['same_service']} | {s['gap_mean']:.2e} | {s['gap_p95']:.2e} | "
                f"{s['gap_max']:.2e} | {s['service_shortfall_mean']:.2e} | {s['seconds_mean']:.3f} | {s['exact_seconds_mean']:.3f} |"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "planner_gap.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "planner_gap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

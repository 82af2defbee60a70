"""How far the planner is from the true optimum, measured by a reference that can disagree with it.

Instances: `benchmarks/trace_instances.py` — real traces through the project's grouping, the full
bundled catalog plus HPC allocations and backfill, and five tight policies (budget, spend-rate, family
quota, egress cap, all at once). Three traces (HPC2N-2002, NASA iPSC/860, NREL Eagle) at three sizes:
150, 300 and 1,000 jobs (38-219 groups, 550-3,158 priced pairs), where `auto` takes the pruned MILP
(`MILP_MAX_PAIRS`), its time limit striking on the largest, with the LP path as fallback; and the
class "lp-alone": HPC2N (2,000 jobs), NASA (6,000) and KTH SP2 (1,000), 318-350 groups and more than
`MILP_MAX_PAIRS` priced pairs, where `auto` takes the LP path alone, as on large inputs in production.
Forced `lp` measures the LP path (relaxation, restricted MILPs, rounding and repair) on every one.
`Plan.solver` in the results says which path ran. The lp-alone references are the largest (5,000-50,000
pairs after pruning): they need `--reference-time-limit` of several minutes per phase to prove their
bounds, and HiGHS may run past its time limit on large MILPs (ERGO-Code/HiGHS#885).

Reference: `benchmarks/reference_milp.py`, an exact MILP written apart from the planner (own
compatibility, own exact marginal-tier egress with shared source volumes, own limits), solved by
HiGHS. Every plan — the planner's and the reference's — is re-priced and checked by
`benchmarks/plan_check.py`.

Per instance and planner path (`auto`, forced `milp`, forced `lp`): hard-limit violations, items
stating less money than they need, service shortfall = (reference value − plan value) / reference
value (served value: share × 2^(priority/10) × HS23-hours), and cost gap = (plan cost − reference
cost) / reference cost (money + allocation value, egress exact), where the reference cost is the
least cost of serving what the path served: the reference runs its cost phase once per distinct
value the paths served (a path serving a sliver more than another is not charged for it, and a
reference serving less, or more, than a path is never compared with it). When HiGHS stops the reference
at its time limit, shortfall is measured against its upper bound on value (HiGHS's, else the LP
relaxation's) and the gap against its lower bound on cost: both then over-state the planner's distance
from the optimum, never under-state it; with no bound, the shortfall or gap is unknown and a fail.
A path FAILS an instance when it breaks a limit, serves more than 1 % less value, or costs more
than 1 % above the reference.

Run: `python -m benchmarks.planner_gap` → benchmarks/results/planner_gap.json (+ .md).
`--quick` runs one policy per trace at the small size. On a shared machine the instances can be
split: `--shard 0/3` … `--shard 2/3` (in parallel) write shard files, `--merge 3` joins them.
`--reuse-reference` re-measures the planner against the stored references; `--resolve NAME` solves one
reference (again: its row is replaced, or added; several may run at once); `--add-floors NAME` adds cost phases at the values the paths
serve now, where a machine of another speed makes a time-limited path serve a sliver less than every
stored floor (its gap is otherwise unknown, and counts as a fail); `--prove NAME` solves cost phases
at the values the paths serve now, each with a cutoff at the least cost a path pays for it, so that
HiGHS searches only for cheaper plans: it finds one (the reference disagrees, with the plan to show)
or its bound rises toward the path's cost, and either is merged into the stored row; `--extend` solves the
references of instances the results file lacks (with `--shard`, each shard its part) and adds them;
`--policy P` keeps the instances under policy P (repeatable).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.plan_check import Check, Usage, check_plan
from benchmarks.reference_milp import ReferenceResult, solve_reference_at
from benchmarks.reference_rules import Catalog
from benchmarks.trace_instances import (
    POLICIES,
    TRACE_NAMES,
    TraceInstance,
    build_instances,
    instance_name,
    windows,
)
from provisioner.catalog import load_catalog
from provisioner.domain import Plan
from provisioner.planner import OfferingColumns, plan

RESULTS = Path(__file__).resolve().parent / "results"
SMALL, LARGE, XLARGE = 150, 300, 1000
SIZES = (SMALL, LARGE, XLARGE)
# the instances of `LP_ALONE_JOBS` (above `MILP_MAX_PAIRS`) are the class "lp-alone"
SIZE_CLASSES = ("small", "large", "xlarge", "lp-alone")
METHODS = ("auto", "milp", "lp")
TOLERANCE = 0.01
REFERENCE_TIME_LIMIT = 60.0
FLOOR_MARGIN = 1e-4  # `--add-floors`: the extra cost phase this far below the least value a path serves


def usages(p: Plan) -> list[Usage]:
    return [Usage(i.group_id, i.offering_id, i.units, i.jobs, float(i.cost)) for i in p.items]


Measured = tuple[Check, str, float]  # a planner path's checked plan, its `Plan.solver`, seconds


def measure(
    inst: TraceInstance, cols: OfferingColumns, reference_time_limit: float = REFERENCE_TIME_LIMIT
) -> dict[str, object]:
    """The planner's paths first, then the reference: one value phase, and a cost phase at each value a
    path served, so every path's cost is compared with the least cost of serving as much."""
    cat = Catalog(inst.offerings, inst.constraints)
    plans = _plans(inst, cols, cat)
    floors = _new_floors(sorted(chk.value for chk, _, _ in plans.values()))
    refs, at_service = _solve_at(inst, cat, floors, reference_time_limit, value_phase=True)
    first, last = at_service[0], refs[-1]
    reference: dict[str, object] = {
        "status": first["status"],
        "value": first["value"],
        "value_bound": last.value_bound,
        "cost": first["cost"],
        "cost_bound": first["cost_bound"],
        "service_floor": first["floor"],
        "at_service": at_service,  # one cost phase per distinct value the paths served, lowest first
        "pairs": last.pairs,
        "pairs_before_pruning": last.pairs_before_pruning,
        "seconds": last.seconds,
        "violations": sorted({v for entry in at_service for v in entry["violations"]}),  # type: ignore[attr-defined]
        "egress_budget_exact": last.egress_budget_exact,
        "notes": last.notes,
    }
    row: dict[str, object] = {
        "instance": inst.name,
        "trace": inst.trace,
        "policy": inst.policy,
        "groups": len(inst.groups),
        "jobs": sum(g.jobs for g in inst.groups),
        "reference": reference,
    }
    _record(row, plans)
    return row


def _new_floors(values: list[float], known: list[float] | None = None) -> list[float]:
    """`values` in order, less those (almost) equal to a known floor or to one kept before them."""
    floors: list[float] = []
    for value in values:
        if all(abs(value - f) > f * 1e-9 + 1e-9 for f in (known or []) + floors):
            floors.append(value)
    return floors


def _solve_at(
    inst: TraceInstance,
    cat: Catalog,
    floors: list[float],
    time_limit: float,
    *,
    value_phase: bool,
    cutoffs: list[float] | None = None,
) -> tuple[list[ReferenceResult], list[dict[str, object]]]:
    """The reference's cost phase at each floor (after its value phase, if asked; with a cost cutoff
    each, if given), and their stored form."""
    refs = solve_reference_at(
        inst.groups,
        inst.offerings,
        inst.constraints,
        catalog=cat,
        time_limit=time_limit,
        service_floors=floors,
        value_phase=value_phase,
        cost_cutoffs=cutoffs,
    )
    return refs, _cost_phases(inst, cat, refs)


def _cost_phases(inst: TraceInstance, cat: Catalog, refs: list[ReferenceResult]) -> list[dict[str, object]]:
    """One stored cost phase per reference result: its floor, its plan re-priced by the checker, its bound."""
    out: list[dict[str, object]] = []
    for ref in refs:
        ref_check = check_plan(
            inst.groups,
            cat,
            inst.constraints,
            [Usage(a.group_id, a.offering_id, a.units, a.jobs, None, a.unit_waves) for a in ref.assignments],
        )
        out.append(
            {
                "floor": ref.service_floor,
                "status": ref.status,
                "value": ref_check.value,
                # the cost of its plan at the floor; none when the cost phase found no plan serving it
                "cost": ref_check.cost if ref.at_floor else float("inf"),
                "cost_bound": ref.cost_bound,
                "violations": ref_check.violations,
            }
        )
    return out


def add_floors(
    row: dict[str, object], inst: TraceInstance, cols: OfferingColumns, reference_time_limit: float
) -> list[float]:
    """Cost phases at the values the paths serve now that the stored reference has none for (time-limited
    solves serve a little more or less on a faster or slower machine), added beside the stored ones;
    the value phase is kept. Then the paths are re-measured. Returns the floors added."""
    cat = Catalog(inst.offerings, inst.constraints)
    plans = _plans(inst, cols, cat)
    ref = row["reference"]
    assert isinstance(ref, dict)
    stored = list(ref["at_service"])
    values = sorted(chk.value for chk, _, _ in plans.values())
    # and one a margin below them all, for runs that serve a sliver less still: a plan between two floors
    # is compared with the lower one's cost, which over-states its gap, never under-states it
    floors = _new_floors([values[0] * (1 - FLOOR_MARGIN), *values], [float(c["floor"]) for c in stored])
    if floors:
        refs, added = _solve_at(inst, cat, floors, reference_time_limit, value_phase=False)
        _keep_cost_phases(ref, added, f"cost phases added at {floors} ({refs[-1].seconds:.0f} s)")
    _record(row, plans)
    return floors


def prove(
    row: dict[str, object], inst: TraceInstance, cols: OfferingColumns, reference_time_limit: float
) -> list[float]:
    """Cost phases at the values the paths serve now, each searched with a cutoff at the least cost a
    path pays for that value (`solve_reference_at`'s `cost_cutoffs`): HiGHS then drops every branch
    dearer than the plan to beat and fixes columns by reduced cost, where a search with no good plan of
    its own cannot. Either it finds a cheaper plan, or its bound rises to the cutoff at most: a proof
    either way. Merged with the stored cost phases: at a floor stored already, the higher of the two
    bounds and the cheaper of the two plans. Then the paths are re-measured. Returns the floors."""
    cat = Catalog(inst.offerings, inst.constraints)
    plans = _plans(inst, cols, cat)
    least: dict[float, float] = {}
    for chk, _, _ in plans.values():
        least[chk.value] = min(least.get(chk.value, float("inf")), chk.cost)
    floors = sorted(least)
    # a sliver over the path's cost, so its own plan stays in the search: the reference's objective adds
    # 1e-7 USD per unit started, and the checker rounds
    cutoffs = [least[f] * (1 + 1e-6) + 1e-4 for f in floors]
    refs, proved = _solve_at(inst, cat, floors, reference_time_limit, value_phase=False, cutoffs=cutoffs)
    ref = row["reference"]
    assert isinstance(ref, dict)
    _keep_cost_phases(ref, proved, f"cost phases with cutoffs at {floors} ({refs[-1].seconds:.0f} s)")
    _record(row, plans)
    return floors


def _keep_cost_phases(ref: dict[str, object], added: list[dict[str, object]], note: str) -> None:
    """`added` merged into the stored reference's cost phases, its violations and notes brought along."""
    ref["at_service"] = merge_cost_phases(list(ref["at_service"]), added)
    ref["violations"] = sorted({v for entry in ref["at_service"] for v in entry["violations"]})
    ref["notes"] = [*ref.get("notes", []), note]


def merge_cost_phases(
    stored: list[dict[str, object]], added: list[dict[str, object]]
) -> list[dict[str, object]]:
    """`added` cost phases into `stored`, lowest floor first: at a floor stored already (to 1e-9), both
    are proofs of the same least cost, so the higher bound and the cheaper plan (with its status) are
    kept, the statuses joined."""
    merged = list(stored)
    for entry in added:
        floor = float(entry["floor"])  # type: ignore[arg-type]
        same = [i for i, c in enumerate(merged) if abs(float(c["floor"]) - floor) <= 1e-9 * floor + 1e-9]  # type: ignore[arg-type]
        if not same:
            merged.append(entry)
            continue
        old = merged[same[0]]
        cheaper = entry if float(entry["cost"]) < float(old["cost"]) else old  # type: ignore[arg-type]
        merged[same[0]] = {
            **cheaper,
            "floor": old["floor"],
            "status": f"{old['status']}; {entry['status']}",
            "cost_bound": max(float(old["cost_bound"]), float(entry["cost_bound"])),  # type: ignore[arg-type]
        }
    return sorted(merged, key=lambda c: float(c["floor"]))  # type: ignore[arg-type]


def _plans(inst: TraceInstance, cols: OfferingColumns, cat: Catalog) -> dict[str, Measured]:
    out: dict[str, Measured] = {}
    for method in METHODS:
        start = time.perf_counter()
        p = plan(inst.groups, cols, (), inst.constraints, method=method)
        seconds = time.perf_counter() - start
        out[method] = (check_plan(inst.groups, cat, inst.constraints, usages(p)), p.solver, seconds)
    return out


def _record(row: dict[str, object], plans: dict[str, Measured]) -> None:
    ref = row["reference"]
    assert isinstance(ref, dict)
    costs = ref.get("at_service") or [
        {"floor": ref["service_floor"], "cost": ref["cost"], "cost_bound": ref["cost_bound"]}
    ]
    for method, (chk, solver, seconds) in plans.items():
        # the cost phase at the most value this plan serves (none lower: the plan is then stale)
        within = [c for c in costs if float(c["floor"]) <= chk.value * (1 + 1e-9) + 1e-9]
        at = max(within, key=lambda c: float(c["floor"])) if within else costs[0]
        row[method] = _compare(
            chk,
            solver,
            seconds,
            best_value=_value_bound(float(ref["value"]), float(ref["value_bound"])),
            best_cost=min(float(at["cost"]), float(at["cost_bound"])),
            floor=float(at["floor"]),
        )


def _value_bound(value: float, bound: float) -> float:
    """The reference's upper bound on value; infinite (unknown) when its bound is below its own plan's
    value, as rows stored before `reference_milp` checked that say of a value phase stopped early."""
    return bound if bound >= value * (1 - 1e-9) - 1e-9 else float("inf")


def remeasure(row: dict[str, object], inst: TraceInstance, cols: OfferingColumns) -> None:
    """The planner's paths again, against the reference figures stored in `row`: the reference is
    written apart from the planner and does not change with it, and it is what takes the hours. A
    path now serving less than the stored floor is marked stale: solve that reference again."""
    _record(row, _plans(inst, cols, Catalog(inst.offerings, inst.constraints)))


def _compare(
    chk: Check, solver: str, seconds: float, *, best_value: float, best_cost: float, floor: float
) -> dict[str, object]:
    """best_value: the reference's upper bound on value; best_cost: its lower bound on the cost of
    serving `floor`, which is no more than what the plan serves, so the gap is never under-stated."""
    # no bound on value: the shortfall is unknown, and counts as a fail
    if best_value == float("inf"):
        shortfall = float("inf")
    else:
        shortfall = (best_value - chk.value) / best_value if best_value > 0 else 0.0
    stale = chk.value < floor * (1 - 1e-6) - 1e-9  # the reference's cost is of serving more than this plan
    if stale or best_cost == float("inf"):
        gap = float("inf")
    elif best_cost > 0:
        gap = (chk.cost - best_cost) / best_cost
    else:
        gap = 0.0 if chk.cost <= 1e-9 else float("inf")
    return {
        "solver": solver,
        "seconds": seconds,
        "violations": chk.violations,
        "under_priced": chk.under_priced,
        "value": chk.value,
        "cost": chk.cost,
        "service_shortfall": shortfall,
        "cost_gap": gap,
        "reference_stale": stale,
        "fails": bool(chk.violations) or shortfall > TOLERANCE or gap > TOLERANCE,
    }


def size_class(row: dict[str, object]) -> str:
    trace, jobs = str(row["instance"]).split("/")[:2]
    if trace in TRACE_NAMES and int(jobs) in SIZES:
        return SIZE_CLASSES[SIZES.index(int(jobs))]
    return "lp-alone"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(rows: list[dict[str, object]], method: str) -> dict[str, object]:
    results = [r[method] for r in rows]
    every_gap = [float(m["cost_gap"]) for m in results]  # type: ignore[index]
    gaps = [g for g in every_gap if g != float("inf")]  # inf: no lower bound on the cost at this service
    short = [float(m["service_shortfall"]) for m in results]  # type: ignore[index]
    return {
        "instances": len(results),
        "paths": sorted({str(m["solver"]) for m in results}),  # type: ignore[index]
        "fails": sum(1 for m in results if m["fails"]),  # type: ignore[index]
        "no_cost_bound": len(every_gap) - len(gaps),
        "violations": sum(len(m["violations"]) for m in results),  # type: ignore[index,arg-type]
        "under_priced_items": sum(len(m["under_priced"]) for m in results),  # type: ignore[index,arg-type]
        "cost_gap_mean": statistics.fmean(gaps) if gaps else float("nan"),
        "cost_gap_median": _pct(gaps, 0.5),
        "cost_gap_p95": _pct(gaps, 0.95),
        "cost_gap_max": max(gaps, default=float("nan")),
        "shortfall_over_1pct": sum(1 for s in short if s > TOLERANCE),
        "shortfall_max": max(short, default=float("nan")),
        "seconds_mean": statistics.fmean(float(m["seconds"]) for m in results),  # type: ignore[index]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one policy per trace, small size only")
    parser.add_argument("--shard", help="i/n: run every n-th instance from the i-th, write a shard file")
    parser.add_argument("--merge", type=int, help="join n shard files into the results")
    parser.add_argument(
        "--reuse-reference",
        action="store_true",
        help="re-measure the planner's paths against the reference figures in the results file (minutes, not hours)",
    )
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="INSTANCE",
        help="solve this instance's reference (again; with --reference-time-limit) and update or add its row",
    )
    parser.add_argument(
        "--add-floors",
        action="append",
        default=[],
        metavar="INSTANCE",
        help="add the reference's cost phases at the values the paths serve now (value phase kept) and update its row",
    )
    parser.add_argument(
        "--prove",
        action="append",
        default=[],
        metavar="INSTANCE",
        help="cost phases at the values the paths serve now, each with a cutoff at a path's cost, merged into its row",
    )
    parser.add_argument(
        "--reference-time-limit", type=float, default=REFERENCE_TIME_LIMIT, help="seconds per phase"
    )
    parser.add_argument(
        "--policy",
        action="append",
        choices=POLICIES,
        help="only instances under this policy (repeatable): solve the quick references first",
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="solve the references of the instances the results file lacks, and add them",
    )
    args = parser.parse_args()
    if args.resolve or args.add_floors or args.prove:
        by_name = _every_instance()
        cols = OfferingColumns.from_offerings(next(iter(by_name.values())).offerings)
        for name in args.resolve:
            row = measure(by_name[name], cols, args.reference_time_limit)
            print(f"{name}: reference {row['reference']['status']}", flush=True)  # type: ignore[index]
            _replace_row(row)
        # cost phases added to a stored row, read afresh: other runs may have replaced theirs meanwhile
        for names, update, did in (
            (args.add_floors, add_floors, "added"),
            (args.prove, prove, "with cutoffs"),
        ):
            for name in names:
                stored_rows = json.loads((RESULTS / "planner_gap.json").read_text())["instances"]
                row = next(r for r in stored_rows if r["instance"] == name)
                floors = update(row, by_name[name], cols, args.reference_time_limit)
                print(f"{name}: cost phases {did} at {floors}", flush=True)
                _replace_row(row)
        return
    if args.reuse_reference:
        stored = json.loads((RESULTS / "planner_gap.json").read_text())["instances"]
        by_name = _every_instance()
        cols = OfferingColumns.from_offerings(next(iter(by_name.values())).offerings)
        for row in stored:
            remeasure(row, by_name[str(row["instance"])], cols)
            print(
                f"{row['instance']}: " + ", ".join(f"{m} {row[m]['cost_gap']:+.2%}" for m in METHODS),
                flush=True,
            )  # type: ignore[index]
        write(stored)
        return
    if args.merge:
        rows = []
        if args.extend:  # shards of `--extend` hold only the new instances
            rows = json.loads((RESULTS / "planner_gap.json").read_text())["instances"]
        for i in range(args.merge):
            rows += json.loads((RESULTS / f"planner_gap.shard{i}.json").read_text())
        # an instance in several shards (a shard stopped and its rest run apart): the later row
        write(list({str(row["instance"]): row for row in rows}.values()))
        return
    catalog = load_catalog().offerings
    instances = (
        build_instances(catalog, sizes=(SMALL,), policies=("all",))
        if args.quick
        else build_instances(catalog, sizes=SIZES, policies=POLICIES, lp_alone=True)
    )
    if args.policy:
        instances = [inst for inst in instances if inst.policy in args.policy]
    stored: list[dict[str, object]] = []
    if args.extend:
        stored = json.loads((RESULTS / "planner_gap.json").read_text())["instances"]
        known = {str(row["instance"]) for row in stored}
        instances = [inst for inst in instances if inst.name not in known]
    if args.shard:
        i, n = (int(v) for v in args.shard.split("/"))
        instances = instances[i::n]
    cols = OfferingColumns.from_offerings(instances[0].offerings)
    rows = []
    for inst in instances:
        row = measure(inst, cols, args.reference_time_limit)
        rows.append(row)
        ref = row["reference"]
        brief = ", ".join(
            f"{m} {row[m]['cost_gap']:+.2%} short {row[m]['service_shortfall']:+.2%} viol {len(row[m]['violations'])}"  # type: ignore[index]
            for m in METHODS
        )
        print(
            f"{inst.name}: {row['groups']} groups, reference {ref['status']} in {ref['seconds']:.0f} s; {brief}",
            flush=True,
        )  # type: ignore[index]
        if args.shard:
            RESULTS.mkdir(exist_ok=True)
            shard = RESULTS / f"planner_gap.shard{args.shard.split('/')[0]}.json"
            shard.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    if not args.shard:
        write(stored + rows)


def _unmeasured(rows: list[dict[str, object]]) -> list[str]:
    """The lines naming the instances of the benchmark with no stored reference yet (so not in the tables)."""
    names = {str(r["instance"]) for r in rows}
    every = [instance_name(t, n, p) for t, n in windows(SIZES, lp_alone=True) for p in POLICIES]
    missing = [name for name in every if name not in names]
    if not missing:
        return []
    return [
        f"Not measured yet ({len(missing)} of {len(every)}: no reference stored; "
        f"`--resolve NAME --reference-time-limit S` adds one): {', '.join(missing)}.",
        "",
    ]


def _every_instance() -> dict[str, TraceInstance]:
    return {inst.name: inst for inst in build_instances(load_catalog().offerings, sizes=SIZES, lp_alone=True)}


def _replace_row(row: dict[str, object]) -> None:
    """Read, replace (or add), write under a lock: several --resolve or --add-floors may run at once, one
    instance each."""
    with (RESULTS / "planner_gap.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = json.loads((RESULTS / "planner_gap.json").read_text())["instances"]
        by_name = {r["instance"]: r for r in stored} | {row["instance"]: row}  # in place, or added last
        write(list(by_name.values()))


def write(rows: list[dict[str, object]]) -> None:
    report = {
        "what": "planner vs an independent exact MILP (benchmarks/reference_milp.py), plans checked by benchmarks/plan_check.py",
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "summary": {m: summarise(rows, m) for m in METHODS},
        "by_size": {
            size: {m: summarise([r for r in rows if size_class(r) == size], m) for m in METHODS}
            for size in SIZE_CLASSES
            if any(size_class(r) == size for r in rows)
        },
        "instances": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "planner_gap.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [
        "# Planner gap vs an independent exact MILP",
        "",
        f"{len(rows)} instances from {len({r['trace'] for r in rows})} real traces × the full catalog × tight policies "
        f"(load average {report['load_average_1min']:.2f} on {os.cpu_count()} cores). "
        "Fails: a broken limit, >1 % less value served, or >1 % dearer than the reference.",
        "",
        "The reference's cost phase runs at each value a path served, so each gap compares plans serving "
        "as much. Gap columns leave out instances with no cost bound (the reference proved none, or a path "
        "now serves less than any stored cost phase: re-solve); they count as fails.",
        "",
        *_unmeasured(rows),
        "| size | path | instances | fails | no cost bound | violations | under-priced items | gap mean | gap median | gap p95 | gap max | shortfall >1 % | shortfall max | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # each size, then every instance at once: the "within 1 % at p95" is over all of them
    every_size = [*report["by_size"].items(), ("all", report["summary"])]  # type: ignore[attr-defined]
    for size, by_method in every_size:
        for m, s in by_method.items():
            lines.append(
                f"| {size} | {m} ({', '.join(s['paths'])}) | {s['instances']} | {s['fails']} | {s['no_cost_bound']} | {s['violations']} | "
                f"{s['under_priced_items']} | {s['cost_gap_mean']:+.2%} | {s['cost_gap_median']:+.2%} | "
                f"{s['cost_gap_p95']:+.2%} | {s['cost_gap_max']:+.2%} | {s['shortfall_over_1pct']} | "
                f"{s['shortfall_max']:+.2%} | {s['seconds_mean']:.2f} |"
            )
    lines += [
        "",
        "| instance | groups | reference | auto path | auto gap | auto shortfall | lp gap | milp gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = r["reference"]
        lines.append(
            f"| {r['instance']} | {r['groups']} | {ref['status']} {ref['seconds']:.0f} s, {ref['pairs']} pairs | "  # type: ignore[index]
            f"{r['auto']['solver']} | {r['auto']['cost_gap']:+.2%} | {r['auto']['service_shortfall']:+.2%} | "  # type: ignore[index]
            f"{r['lp']['cost_gap']:+.2%} | {r['milp']['cost_gap']:+.2%} |"  # type: ignore[index]
        )
    (RESULTS / "planner_gap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

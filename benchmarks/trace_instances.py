"""Planning instances built from the real batch traces in `data/traces/`, the full bundled catalog and tight policies.

Jobs: a window of consecutive jobs of one trace (HPC2N-2002, NASA iPSC/860 and KTH SP2 in SWF, NREL
Eagle in Slurm CSV), mapped deterministically to this broker's jobs: experiment from the trace's user, cores
(capped at 64) and requested time (run time where none) from the trace, 2 GB per core (the trace's
requested memory where it has one), GPUs from NREL's requests; input data for three experiments
(AWS us-east-1, GCE europe-west4, CERN), 0.5-6.5 GB per job with a quarter of it coming back;
a third of the jobs preemptible, a fifth of the users at priority 10. The jobs then go through the
project's own grouping (`provisioner.grouping.group_jobs`).

Sizes: 150, 300 and 1,000 jobs of HPC2N, NASA and NREL; and, so that `auto` takes the LP path alone
(more than `MILP_MAX_PAIRS` priced pairs), the first window of each trace that groups into 318-350
groups (`LP_ALONE_JOBS`): 2,000 HPC2N jobs, 6,000 NASA jobs, 1,000 KTH jobs. NREL's sample has 1,000
jobs (113 groups), too few for that path.

Offerings: the bundled catalog (39,401) plus two HPC allocations and a backfill pool.

Policies ("tight" means the limit binds: not everything can be served at the cheapest price):
* budget: each experiment's budget buys about a third of its work at $0.0003 per HS23-hour;
* spend-rate: facility and per-experiment USD/h caps near a quarter of what serving all in the
  horizon would need;
* quota: the 40 quota families cheapest per HS23-hour for the jobs' shapes hold 96 cores each;
* egress (every policy): each region has moved its first, free GB this period; egress policy: each
  experiment with data may move a fifth of its volume; CERN data leaves on a route
  whose cheaper tier starts within the round, and AWS us-east-1 has used all but 200 GB of its
  first tier (marginal tiers are crossed inside the plan);
* all: every one of the above at once.
"""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from benchmarks.planner_workload import NOW, hpc_offerings
from provisioner.domain import (
    Arch,
    DemandGroup,
    EgressRoute,
    EgressTier,
    ExperimentLimits,
    Offering,
    PendingJob,
    PlanningConstraints,
)
from provisioner.grouping import group_jobs
from provisioner.sources.swf import read_swf

TRACES = Path(__file__).resolve().parent.parent / "data" / "traces"
EXPERIMENTS = ("atlas", "cms", "lhcb", "dune")
HOME = {"atlas": "aws:us-east-1", "cms": "gce:europe-west4", "lhcb": "onprem:cern"}
POLICIES = ("budget", "spend-rate", "quota", "egress", "all")
TRACE_NAMES = ("hpc2n", "nasa-ipsc", "nrel-eagle")
# jobs per trace for instances above `MILP_MAX_PAIRS` (4,000): 318, 350 and 336 groups, 4,169-4,267
# priced pairs under the budget policy
LP_ALONE_JOBS = {"hpc2n": 2000, "nasa-ipsc": 6000, "kth-sp2": 1000}
CERN_TIERS = (EgressTier(400.0, Decimal("0.05")), EgressTier(None, Decimal("0.02")))


@dataclass(frozen=True, slots=True)
class TraceJob:
    number: int
    user: int
    cores: int
    hours: float
    memory_gb: float | None
    gpus: int


def trace_jobs(name: str) -> list[TraceJob]:
    if name == "hpc2n":
        return _swf(TRACES / "alea_hpc2n_subset.swf")
    if name == "nasa-ipsc":
        return _swf(TRACES / "NASA-iPSC-1993-3.1-cln.swf.gz")
    if name == "kth-sp2":
        return _swf(TRACES / "KTH-SP2-1996-2.1-cln.first2000.swf.gz")
    if name == "nrel-eagle":
        return _nrel(TRACES / "nrel_eagle_sample_1000jobs.csv")
    raise ValueError(f"unknown trace {name!r}")


def _swf(path: Path) -> list[TraceJob]:
    out = []
    for j in read_swf(path):
        seconds = j.requested_time_s or j.run_s
        mem = j.requested_memory_kb_per_proc / 1e6 if j.requested_memory_kb_per_proc else None
        out.append(TraceJob(j.job_number, j.user_id or 0, j.processors, seconds / 3600.0, mem, 0))
    return out


def _nrel(path: Path) -> list[TraceJob]:
    out = []
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as handle:
        for row in csv.DictReader(handle):
            run = float(row["run_time"] or 0)
            if run <= 0:
                continue
            seconds = float(row["wallclock_req"] or 0) or run
            procs = max(1, int(float(row["processors_req"] or 1)))
            mem = float(row["mem_req"] or 0) / 1e3 / procs  # MB per job → GB per core
            out.append(
                TraceJob(
                    int(row["job_id"]),
                    int("".join(ch for ch in row["user"] if ch.isdigit()) or 0),
                    procs,
                    seconds / 3600.0,
                    mem if mem > 0 else None,
                    min(2, int(float(row["gpus_req"] or 0))),
                )
            )
    return out


def pending_jobs(name: str, start: int, count: int) -> list[PendingJob]:
    out = []
    for t in trace_jobs(name)[start : start + count]:
        experiment = EXPERIMENTS[t.user % len(EXPERIMENTS)]
        cores = min(t.cores, 64)
        per_core = min(t.memory_gb, 8.0) if t.memory_gb else 2.0
        home = HOME.get(experiment)
        input_gb = 0.5 + t.number % 7 if home else 0.0
        out.append(
            PendingJob(
                job_id=f"{name}-{t.number}",
                experiment=experiment,
                cores=cores,
                memory_gb=cores * per_core,
                walltime_hours=max(0.25, min(t.hours, 96.0)),
                archs=frozenset({Arch.X86_64, Arch.ARM64}) if t.user % 3 == 0 else frozenset({Arch.X86_64}),
                gpus=t.gpus,
                input_gb=input_gb,
                output_gb=input_gb * 0.25,
                data_location=home,
                preemptible=t.number % 3 == 0,
                priority=10 if t.user % 5 == 0 else 0,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class TraceInstance:
    name: str
    trace: str
    policy: str
    groups: list[DemandGroup]
    offerings: list[Offering]
    constraints: PlanningConstraints


def _cheap_families(groups: list[DemandGroup], offerings: list[Offering], count: int) -> list[str]:
    best: dict[str, float] = {}
    for o in offerings:
        if o.price_per_hour <= 0 or o.gpu_count:
            continue
        rate = float(o.price_per_hour) / (o.cores * o.hs23_per_core)
        best[o.family] = min(best.get(o.family, rate), rate)
    return sorted(best, key=best.__getitem__)[:count]


def policy_constraints(
    policy: str, groups: list[DemandGroup], offerings: list[Offering]
) -> PlanningConstraints:
    work: dict[str, float] = defaultdict(float)
    volume: dict[str, float] = defaultdict(float)
    for g in groups:
        work[g.experiment] += g.hs23_hours
        if g.data_location:
            volume[g.experiment] += g.jobs * (g.input_gb_per_job + g.output_gb_per_job)
    every = policy == "all"
    limits = {}
    for e in EXPERIMENTS:
        budget = spend = cap = None
        if policy == "budget" or every:
            budget = Decimal(f"{work[e] * 0.0003 / 3:.2f}")
        if policy == "spend-rate" or every:
            spend = Decimal(f"{max(1.0, work[e] * 0.0003 / 24 / 4):.2f}")
        if (policy == "egress" or every) and volume[e] > 0:
            cap = round(volume[e] / 5, 1)
        limits[e] = ExperimentLimits(
            e,
            budget_remaining=budget,
            spend_rate_cap_per_hour=spend,
            egress_cap_gb=cap,
            share=2.0 if e == "atlas" else 1.0,
        )
    total = sum(work.values())
    quota = {f: 96 for f in _cheap_families(groups, offerings, 40)} if policy in ("quota", "all") else {}
    # a period already under way: every region has moved its first (free) GB
    used = {o.location: 1.0 for o in offerings if o.egress_tiers}
    if policy in ("egress", "all"):
        used |= {"aws:us-east-1": 10_040.0, "onprem:cern": 200.0}
    return PlanningConstraints(
        experiments=limits,
        spend_rate_cap_per_hour=Decimal(f"{max(2.0, total * 0.0003 / 24 / 3):.2f}")
        if policy in ("spend-rate", "all")
        else None,
        family_quota_cores=quota,
        egress_routes=(EgressRoute("onprem:cern", "*", CERN_TIERS),),
        egress_used_gb=used,
        allocation_hour_value={"slurm:maxwell:cpu-node:allocation": Decimal("0.5")},
        horizon_hours=24.0,
        now=NOW,
    )


def windows(sizes: tuple[int, ...], *, lp_alone: bool = False) -> list[tuple[str, int]]:
    """(trace, jobs): every trace of `TRACE_NAMES` at each size; with `lp_alone`, then every trace of
    `LP_ALONE_JOBS` at its size."""
    out = [(trace, size) for trace in TRACE_NAMES for size in sizes]
    return out + list(LP_ALONE_JOBS.items()) if lp_alone else out


def instance_name(trace: str, jobs: int, policy: str) -> str:
    return f"{trace}/{jobs}/{policy}"


def build_instances(
    catalog: tuple[Offering, ...],
    sizes: tuple[int, ...] = (300, 1000),
    policies: tuple[str, ...] = POLICIES,
    *,
    lp_alone: bool = False,
) -> list[TraceInstance]:
    """An instance per window of `windows` and policy."""
    offerings = [*catalog, *hpc_offerings()]
    out = []
    for trace, size in windows(sizes, lp_alone=lp_alone):
        groups = group_jobs(pending_jobs(trace, 0, size))
        groups = [replace(g) for g in groups]
        for policy in policies:
            out.append(
                TraceInstance(
                    name=instance_name(trace, size, policy),
                    trace=trace,
                    policy=policy,
                    groups=groups,
                    offerings=offerings,
                    constraints=policy_constraints(policy, groups, offerings),
                )
            )
    return out

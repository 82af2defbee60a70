"""Realistic synthetic workloads for the planner benchmarks: pending jobs, extra offerings, fleet and constraints.

Jobs (documented distributions, fixed seed):
* walltime: resampled from the requested times of the HPC2N trace bundled in `data/traces/`
  (Parallel Workloads Archive, SWF field 9), clipped to [0.1, 96] h — real batch walltimes;
* 8 experiments (VOs) with Zipf(1) shares, each running 3 workflow types (pilots see few shapes per VO);
  a workflow draws cores per job from a HEP-like mix {1: 55%, 2: 5%, 4: 10%, 8: 25%, 16: 5%},
  memory 2 GB per core × {1: 60%, 1.5: 25%, 2: 10%, 4: 5%}, arm64-capable with p = 0.3,
  reads input data (at its VO's home location) with p = 0.5, preemptible with p = 0.4;
  DUNE's and SKA's first workflow needs 1 GPU (A100 for DUNE, any model for SKA);
* per job: input lognormal (median 2 GB, σ 1), output 25% of input; priority 0 (85%) or 10 (15%).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from provisioner.domain import (
    AllocationInfo,
    Arch,
    EgressRoute,
    EgressTier,
    ExperimentLimits,
    Market,
    Offering,
    PlanningConstraints,
)
from provisioner.grouping import ARCH_BITS, JobTable

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "data" / "traces" / "alea_hpc2n_subset.swf"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EXPERIMENTS = ("atlas", "cms", "lhcb", "alice", "dune", "rubin", "ska", "icecube")
DATA_LOCATIONS = ("aws:us-east-1", "gce:europe-west4", "onprem:cern", "onprem:fnal")
WORKFLOWS_PER_EXPERIMENT = 3


def trace_walltimes() -> np.ndarray:
    """Requested walltimes (hours) of the bundled SWF trace."""
    hours = []
    for line in TRACE.read_text().splitlines():
        if line.startswith(";") or not line.strip():
            continue
        fields = line.split()
        requested = float(fields[8]) if float(fields[8]) > 0 else float(fields[3])
        if requested > 0:
            hours.append(requested / 3600.0)
    return np.clip(np.asarray(hours), 0.1, 96.0)


def workflow_types(rng: np.random.Generator) -> list[dict[str, object]]:
    """Per experiment, WORKFLOWS_PER_EXPERIMENT job types (what pilots actually see: few shapes per VO)."""
    types: list[dict[str, object]] = []
    for e in range(len(EXPERIMENTS)):
        for w in range(WORKFLOWS_PER_EXPERIMENT):
            cores = int(rng.choice([1, 2, 4, 8, 16], p=[0.55, 0.05, 0.10, 0.25, 0.05]))
            gpu = e in (4, 6) and w == 0  # dune and ska train on GPUs
            types.append(
                {
                    "experiment": e,
                    "cores": cores,
                    "memory": cores * 2.0 * float(rng.choice([1.0, 1.5, 2.0, 4.0], p=[0.6, 0.25, 0.1, 0.05])),
                    "arch_mask": ARCH_BITS[Arch.X86_64]
                    | (ARCH_BITS[Arch.ARM64] if rng.random() < 0.3 else 0),
                    "gpus": 1 if gpu else 0,
                    "gpu_model": (0 if e == 4 else -1) if gpu else -1,
                    "data": rng.random() < 0.5,
                    "preemptible": rng.random() < 0.4,
                }
            )
    return types


def generate_jobs(n: int, seed: int = 1) -> JobTable:
    rng = np.random.default_rng(seed)
    types = workflow_types(rng)
    shares = np.repeat(1.0 / np.arange(1, len(EXPERIMENTS) + 1), WORKFLOWS_PER_EXPERIMENT)
    kind = rng.choice(len(types), n, p=shares / shares.sum())

    def column(name: str, dtype: type) -> np.ndarray:
        return np.array([t[name] for t in types], dtype=dtype)[kind]

    experiment = column("experiment", np.int64)
    has_data = column("data", np.bool_)
    input_gb = np.where(has_data, rng.lognormal(np.log(2.0), 1.0, n), 0.0)
    return JobTable(
        experiment=experiment,
        experiments=EXPERIMENTS,
        cores=column("cores", np.int64),
        memory_gb=column("memory", np.float64),
        walltime_hours=rng.choice(trace_walltimes(), n),
        arch_mask=column("arch_mask", np.int64),
        gpus=column("gpus", np.int64),
        gpu_model=column("gpu_model", np.int64),
        gpu_models=("A100",),
        input_gb=input_gb,
        output_gb=input_gb * 0.25,
        data_location=np.where(has_data, experiment % len(DATA_LOCATIONS), -1).astype(np.int64),
        data_locations=DATA_LOCATIONS,
        preemptible=column("preemptible", np.bool_),
        priority=rng.choice([0, 10], n, p=[0.85, 0.15]).astype(np.int64),
    )


def hpc_offerings() -> list[Offering]:
    """Two HPC allocations and a backfill pool (the public cloud catalog has none)."""
    out = []
    for name, left, pacing_days in (("maxwell", 50_000.0, 60), ("perlmutter", 8_000.0, 10)):
        out.append(
            Offering(
                id=f"slurm:{name}:cpu-node:allocation",
                backend=name,
                provider="slurm",
                region=name,
                instance_type="cpu-node",
                family=f"slurm:{name}",
                market=Market.ALLOCATION,
                cores=128,
                memory_gb=512.0,
                arch=Arch.X86_64,
                price_per_hour=Decimal(0),
                hs23_per_core=20.0,
                startup_seconds=300,
                max_walltime_hours=48.0,
                capacity_units=400,
                allocation=AllocationInfo(
                    name=name,
                    account="hep",
                    partition="cpu",
                    qos=None,
                    node_hours_granted=left * 2,
                    node_hours_used=left,
                    starts=NOW - timedelta(days=100),
                    ends=NOW + timedelta(days=pacing_days),
                ),
            )
        )
    out.append(
        Offering(
            id="backfill:desy:idle-node:backfill",
            backend="desy-backfill",
            provider="backfill",
            region="desy",
            instance_type="idle-node",
            family="backfill:desy",
            market=Market.BACKFILL,
            cores=64,
            memory_gb=256.0,
            arch=Arch.X86_64,
            price_per_hour=Decimal(0),
            hs23_per_core=16.0,
            interruption_rate_per_hour=0.1,
            startup_seconds=60,
            max_walltime_hours=24.0,
            capacity_units=200,
        )
    )
    return out


def constraints_for(offerings: list[Offering] | tuple[Offering, ...]) -> PlanningConstraints:
    families = sorted({o.family for o in offerings})
    quotas = {f: 4096 for f in families[::3]}
    inter_region = (EgressTier(None, Decimal("0.02")),)
    return PlanningConstraints(
        experiments={
            "atlas": ExperimentLimits("atlas", budget_remaining=Decimal(200_000), share=2.0),
            "cms": ExperimentLimits(
                "cms", budget_remaining=Decimal(50_000), spend_rate_cap_per_hour=Decimal(4000)
            ),
            "lhcb": ExperimentLimits("lhcb", budget_remaining=Decimal(5_000), egress_cap_gb=20_000.0),
            "dune": ExperimentLimits(
                "dune", allowed_markets=frozenset({Market.SPOT, Market.BACKFILL, Market.ALLOCATION})
            ),
            "rubin": ExperimentLimits(
                "rubin", allowed_archs=frozenset({Arch.X86_64}), budget_remaining=Decimal(20_000)
            ),
            "ska": ExperimentLimits("ska", max_gpus=16, budget_remaining=Decimal(2_000)),
        },
        spend_rate_cap_per_hour=Decimal(25_000),
        family_quota_cores=quotas,
        egress_routes=(
            EgressRoute("onprem:cern", "*", inter_region),
            EgressRoute("onprem:fnal", "*", inter_region),
        ),
        egress_used_gb={"aws:us-east-1": 5_000.0},
        allocation_hour_value={"slurm:maxwell:cpu-node:allocation": Decimal("0.5")},
        horizon_hours=24.0,
        now=NOW,
    )

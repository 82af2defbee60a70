"""The broker's core vocabulary as plain, typed values: demand, offerings, constraints, plans, fleet.

This module imports nothing from the rest of the project, so `backends`, `policies` and
`accounting` may use these types without depending on the engine. Money is `Decimal` (USD);
times are UTC-aware `datetime`s; durations are hours as `float`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

# Units of these groups serve nodes Slurm's power saving resumed: their demand is in Slurm's queue,
# and Slurm's SuspendProgram ends them (backends.slurm.burst, planner.drain).
SLURM_NODE_GROUP_PREFIX = "slurm-node:"


class Market(enum.StrEnum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"
    ALLOCATION = "allocation"
    BACKFILL = "backfill"


class Arch(enum.StrEnum):
    X86_64 = "x86_64"
    ARM64 = "arm64"


class Pacing(enum.StrEnum):
    """How an HPC allocation should be burnt."""

    EVEN = "even"  # spend evenly until the end date
    ASAP = "asap"  # use it up as fast as possible


@dataclass(frozen=True, slots=True)
class EgressTier:
    """Marginal price band: each GB beyond the previous tier's edge up to `up_to_gb` costs `usd_per_gb`."""

    up_to_gb: float | None  # None: no upper edge
    usd_per_gb: Decimal


@dataclass(frozen=True, slots=True)
class AllocationInfo:
    """An HPC allocation behind an `allocation` offering."""

    name: str
    account: str
    partition: str
    qos: str | None
    node_hours_granted: float
    node_hours_used: float
    starts: datetime
    ends: datetime
    pacing: Pacing = Pacing.EVEN
    # The committed-hours ledger (policies.pacing): `node_hours_used` is settled (sacct), these two are
    # booked but not yet charged — running pilots' remaining walltime, queued pilots' time limits.
    node_hours_in_flight: float = 0.0
    node_hours_committed: float = 0.0

    @property
    def node_hours_booked(self) -> float:
        """Settled + in flight + committed: what the allocation will have been charged once every
        pilot already submitted has run to its limit."""
        return self.node_hours_used + self.node_hours_in_flight + self.node_hours_committed

    @property
    def node_hours_left(self) -> float:
        """Granted − booked: what new pilots may still ask for (never more than granted in total)."""
        return max(0.0, self.node_hours_granted - self.node_hours_booked)


@dataclass(frozen=True, slots=True)
class Offering:
    """One way to get capacity: a backend, a place, a shape, a market and a price.

    `id` is stable and unique: "<backend>:<region or zone>:<instance type>:<market>".
    For allocations and backfill, `instance_type` is the node shape name and `capacity_units`
    caps how many units (nodes or slices) can exist at once.
    """

    id: str
    backend: str  # name of the configured backend instance (e.g. "aws", "gce", "maxwell")
    provider: str  # aws | gce | openstack | slurm | backfill | simulated
    region: str
    instance_type: str
    family: str  # quota family, e.g. "aws:m7g", "gce:a2", "slurm:maxwell"
    market: Market
    cores: int
    memory_gb: float
    arch: Arch
    price_per_hour: Decimal  # USD per unit-hour actually charged (0 for allocation/backfill)
    hs23_per_core: float
    zone: str | None = None
    gpu_model: str | None = None
    gpu_count: int = 0
    interruption_rate_per_hour: float = 0.0  # probability per hour a unit is taken back
    startup_seconds: int = 120
    max_walltime_hours: float | None = None
    capacity_units: int | None = None  # None: unbounded as far as the catalog knows
    egress_tiers: tuple[EgressTier, ...] = ()  # internet egress out of this region
    allocation: AllocationInfo | None = None
    benchmark_assumption: str = ""  # how hs23_per_core was derived (CPU model mapping)

    @property
    def hs23(self) -> float:
        """HEPscore23 of one whole unit."""
        return self.cores * self.hs23_per_core

    @property
    def location(self) -> str:
        """Where data produced here sits, for egress: "<provider>:<region>"."""
        return f"{self.provider}:{self.region}"


@dataclass(frozen=True, slots=True)
class DemandGroup:
    """Pending jobs with the same needs. Millions of jobs collapse into hundreds of these.

    `walltime_hours` is the wall time each job needs on a core of `reference_hs23_per_core`;
    a faster core finishes it sooner. Work per job in HS23-hours is
    cores_per_job × walltime_hours × reference_hs23_per_core.
    """

    id: str
    experiment: str
    jobs: int
    cores_per_job: int
    memory_gb_per_job: float
    walltime_hours: float
    archs: frozenset[Arch] = frozenset({Arch.X86_64})
    gpus_per_job: int = 0
    gpu_model: str | None = None  # None with gpus_per_job > 0: any GPU model
    input_gb_per_job: float = 0.0
    output_gb_per_job: float = 0.0
    data_location: str | None = None  # "<provider>:<region>" of the input data
    preemptible: bool = False
    priority: int = 0
    deadline: datetime | None = None
    max_cost_per_hs23_hour: Decimal | None = None
    request_id: str | None = None  # burst request this group came from
    source: str = "unknown"
    reference_hs23_per_core: float = 10.0

    @property
    def hs23_hours_per_job(self) -> float:
        return self.cores_per_job * self.walltime_hours * self.reference_hs23_per_core

    @property
    def hs23_hours(self) -> float:
        return self.jobs * self.hs23_hours_per_job


@dataclass(frozen=True, slots=True)
class ExperimentLimits:
    """What one experiment may spend and use, as the policies say now (already net of spend so far)."""

    experiment: str
    budget_remaining: Decimal | None = None  # None: no budget set (unlimited)
    spend_rate_cap_per_hour: Decimal | None = None
    allowed_backends: frozenset[str] | None = None  # None: any
    allowed_markets: frozenset[Market] | None = None
    allowed_archs: frozenset[Arch] | None = None
    allowed_gpu_models: frozenset[str] | None = None
    max_gpus: int | None = None
    egress_cap_gb: float | None = None  # remaining GB this period
    share: float = 1.0  # relative priority share between experiments


@dataclass(frozen=True, slots=True)
class EgressRoute:
    """Price of moving data from one location to another, as marginal tiers."""

    source: str  # "<provider>:<region>"
    destination: str  # "<provider>:<region>" or "*" for anywhere else
    tiers: tuple[EgressTier, ...]


@dataclass(frozen=True, slots=True)
class PlanningConstraints:
    """Everything the policies impose on one planning round, already evaluated to numbers."""

    experiments: Mapping[str, ExperimentLimits] = field(default_factory=dict)
    # True (what a policy file gives): an experiment not in `experiments` gets nothing.
    # False only for planning without any policy (tests, benchmarks): every experiment unlimited.
    only_named_experiments: bool = False
    spend_rate_cap_per_hour: Decimal | None = None  # facility-wide
    family_quota_cores: Mapping[str, int] = field(default_factory=dict)  # family -> max cores at once
    egress_routes: tuple[EgressRoute, ...] = ()
    egress_used_gb: Mapping[str, float] = field(default_factory=dict)  # source location -> GB this period
    # value of one allocation node-hour (USD) under the pacing policy, by offering id
    allocation_hour_value: Mapping[str, Decimal] = field(default_factory=dict)
    unavailable_offerings: frozenset[str] = frozenset()  # circuit breaker open / marked unavailable
    idle_drain_hours: float = 0.0  # a running unit idle this long is drained (0: at once)
    horizon_hours: float = 24.0
    now: datetime | None = None


class RejectReason(enum.StrEnum):
    WRONG_ARCH = "wrong architecture"
    NO_GPU = "no or wrong GPU"
    GPU_NOT_ALLOWED = "GPU not allowed"
    MEMORY = "not enough memory"
    CORES = "not enough cores"
    WALLTIME = "walltime too short"
    MARKET_NOT_ALLOWED = "market not allowed"
    BACKEND_NOT_ALLOWED = "backend not allowed"
    NOT_PREEMPTIBLE = "backfill only takes preemptible work"
    OVER_BUDGET = "over budget"
    SPEND_RATE = "spend-rate cap"
    QUOTA = "quota"
    EGRESS_CAP = "egress cap"
    ALLOCATION_PACED = "allocation paced"
    ALLOCATION_EXHAUSTED = "allocation exhausted or expired"
    CAPACITY = "capacity exhausted"
    UNAVAILABLE = "offering unavailable (circuit breaker)"
    NOT_IN_POLICY = "experiment not named in the policy"
    OVER_MAX_COST = "over the request's maximum cost"
    DEADLINE = "cannot meet deadline"
    MORE_EXPENSIVE = "more expensive"


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """Cost per HS23-hour of useful work and where it comes from (USD per HS23-hour)."""

    compute: Decimal
    interruption: Decimal = Decimal(0)
    egress: Decimal = Decimal(0)
    startup: Decimal = Decimal(0)
    allocation_value: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        return self.compute + self.interruption + self.egress + self.startup + self.allocation_value


@dataclass(frozen=True, slots=True)
class PlanItem:
    """Start `units` of `offering_id` to run `jobs` of `group_id`."""

    group_id: str
    offering_id: str
    units: int
    jobs: int
    hours: float  # how long each unit is expected to run
    cost: Decimal  # expected total cost of these units (compute + egress)
    cost_per_hs23_hour: CostBreakdown


@dataclass(frozen=True, slots=True)
class Rejection:
    offering_id: str
    reason: RejectReason
    cost_per_hs23_hour: Decimal | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GroupExplanation:
    group_id: str
    experiment: str
    chosen: tuple[PlanItem, ...]
    rejected: tuple[Rejection, ...]  # best alternatives first, a handful
    unserved_jobs: int = 0
    unserved_reason: RejectReason | None = None
    note: str = ""


class DrainReason(enum.StrEnum):
    IDLE = "idle: no jobs, no cost"
    NO_DEMAND = "no demand left for its group"
    OVER_BUDGET = "budget exhausted"
    CHEAPER_ELSEWHERE = "cheaper capacity elsewhere"
    ALLOCATION_ENDING = "allocation ending"
    OWNER_RECLAIM = "backfill owner needs the node"
    OPERATOR = "operator asked"


@dataclass(frozen=True, slots=True)
class DrainOrder:
    resource_id: str
    reason: DrainReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    items: tuple[PlanItem, ...]
    drains: tuple[DrainOrder, ...]
    explanations: tuple[GroupExplanation, ...]
    total_cost: Decimal
    spend_rate_per_hour: Decimal
    solver: str = "greedy"
    objective: float = 0.0
    created_at: datetime | None = None


class ResourceState(enum.StrEnum):
    REQUESTED = "requested"  # intent recorded, no backend call made yet
    PROVISIONING = "provisioning"  # backend accepted the create call
    RUNNING = "running"
    DRAINING = "draining"
    RELEASED = "released"
    FAILED = "failed"
    LOST = "lost"


# The lifecycle as data: a transition not listed here is a bug.
RESOURCE_TRANSITIONS: Mapping[ResourceState, frozenset[ResourceState]] = {
    ResourceState.REQUESTED: frozenset(
        {ResourceState.PROVISIONING, ResourceState.RUNNING, ResourceState.FAILED, ResourceState.RELEASED}
    ),
    ResourceState.PROVISIONING: frozenset(
        {
            ResourceState.RUNNING,
            ResourceState.DRAINING,
            ResourceState.FAILED,
            ResourceState.LOST,
            ResourceState.RELEASED,
        }
    ),
    ResourceState.RUNNING: frozenset(
        {ResourceState.DRAINING, ResourceState.RELEASED, ResourceState.LOST, ResourceState.FAILED}
    ),
    ResourceState.DRAINING: frozenset({ResourceState.RELEASED, ResourceState.LOST, ResourceState.FAILED}),
    ResourceState.RELEASED: frozenset(),
    ResourceState.FAILED: frozenset({ResourceState.RELEASED}),
    ResourceState.LOST: frozenset({ResourceState.RELEASED, ResourceState.RUNNING}),
}

LIVE_STATES = frozenset(
    {ResourceState.REQUESTED, ResourceState.PROVISIONING, ResourceState.RUNNING, ResourceState.DRAINING}
)


class IllegalTransition(ValueError):
    def __init__(self, resource_id: str, current: ResourceState, target: ResourceState) -> None:
        super().__init__(f"resource {resource_id}: cannot go from {current} to {target}")
        self.resource_id = resource_id
        self.current = current
        self.target = target


def check_transition(resource_id: str, current: ResourceState, target: ResourceState) -> None:
    if target not in RESOURCE_TRANSITIONS[current]:
        raise IllegalTransition(resource_id, current, target)


@dataclass(frozen=True, slots=True)
class FleetUnit:
    """One live resource as the planner sees it."""

    resource_id: str
    offering_id: str
    group_id: str | None
    experiment: str | None
    state: ResourceState
    busy: bool  # running at least one job
    idle_hours: float = 0.0
    # Something reports on the work (heartbeat, batch system, provider metrics); False: never idle-drained.
    busy_known: bool = True
    walltime_left_hours: float | None = None  # HPC pilots: time before Slurm kills it
    price_per_hour: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class PendingJob:
    """One pending batch job as a workload source sees it, before grouping."""

    job_id: str
    experiment: str
    cores: int
    memory_gb: float
    walltime_hours: float
    archs: frozenset[Arch] = frozenset({Arch.X86_64})
    gpus: int = 0
    gpu_model: str | None = None
    input_gb: float = 0.0
    output_gb: float = 0.0
    data_location: str | None = None
    preemptible: bool = False
    priority: int = 0
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    reason: str | None = None  # Slurm pending reason, where known


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one resource, or one job on it, used: the input of accounting (APEL and cost ledger).

    `record_key` is stable ("<site>:<kind>:<id>") so importing the same usage twice is a no-op.
    """

    record_key: str
    kind: str  # vm | pilot | backfill | job
    experiment: str  # VO
    site: str
    submit_host: str
    backend: str
    start_time: datetime
    end_time: datetime | None
    wall_seconds: int
    cpu_seconds: int | None  # None: unknown (no measurement from sacct TotalCPU or the VM's counters)
    cores: int
    nodes: int = 1
    memory_kb: int | None = None
    gpu_model: str | None = None
    gpu_count: int = 0
    hs23_per_core: float | None = None
    resource_id: str | None = None
    local_job_id: str | None = None
    local_user: str | None = None
    fqan: str | None = None
    global_user_name: str | None = None
    offering_id: str | None = None
    offering_family: str | None = None
    market: str | None = None
    infrastructure: str | None = None
    status: str = "completed"
    cloud_image_id: str | None = None
    cloud_type: str | None = None

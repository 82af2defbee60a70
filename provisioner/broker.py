"""The composition root: builds one broker (database, catalog, policy, planner, backends, engine) from settings.

Everything else takes its collaborators as arguments; this is the one place that decides which
ones a running broker gets. Embedded defaults: SQLite in the state directory, the bundled catalog,
the example policy, simulated backends serving the catalog's offerings and the policy's allocations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

import policies
from accounting.billing import load_units
from accounting.egress import egress_used_gb
from accounting.spot_prices import StoredSpotPrices
from backends.base import Backend
from backends.simulated import SimulatedBackend, SimulatedBackfill, SimulatedCloud, SimulatedHPC
from provisioner.actuator import ActuatorSettings
from provisioner.backend_config import configured_regions, load_backends
from provisioner.bursts.repository import settle_requests
from provisioner.bus import Bus
from provisioner.catalog import Catalog, load_catalog
from provisioner.circuit import CircuitSettings
from provisioner.clock import Clock, SystemClock
from provisioner.db import open_database
from provisioner.domain import (
    DemandGroup,
    EgressRoute,
    FleetUnit,
    Market,
    Offering,
    PlanningConstraints,
)
from provisioner.engine import DecisionEngine, DemandFn, EngineSettings, PlannerFn
from provisioner.grouping import group_jobs
from provisioner.ids import IdSource
from provisioner.leader import Leadership, LeaseSettings
from provisioner.planner import plan
from provisioner.planner.workers import Workers
from provisioner.policy_source import PolicySource
from provisioner.policy_versions import PolicyKeeper
from provisioner.reconciler import ReconcileSettings
from provisioner.settings import Settings
from provisioner.sources.base import WorkloadSource
from provisioner.sources.configured import slurm_sources
from provisioner.spend import merge_period_keys, spend_in_period
from provisioner.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = REPO_ROOT / "examples" / "policy.toml"


def policy_path(settings: Settings) -> Path:
    return settings.policy_file or EXAMPLE_POLICY


def simulated_backends(
    offerings: Sequence[Offering],
    clock: Clock,
    *,
    broker_id: str,
    seed: int = 7,
    capacity: dict[str, int] | None = None,
    state_dir: Path | None = None,
) -> dict[str, SimulatedBackend]:
    """One simulated backend per backend name in the offerings, of the kind its markets call for.

    `state_dir`: keep each backend's units in `<state_dir>/<name>.json`, so several processes (the
    engine, Slurm's resume/suspend programs) see one simulated fleet."""
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    by_backend: dict[str, list[Offering]] = defaultdict(list)
    for o in offerings:
        by_backend[o.backend].append(o)
    out: dict[str, SimulatedBackend] = {}
    for i, (name, offers) in enumerate(sorted(by_backend.items())):
        markets = {o.market for o in offers}
        kind: type[SimulatedBackend]
        if Market.ALLOCATION in markets:
            kind = SimulatedHPC
        elif Market.BACKFILL in markets:
            kind = SimulatedBackfill
        else:
            kind = SimulatedCloud
        state_file = state_dir / f"{name}.json" if state_dir is not None else None
        out[name] = kind(
            name, offers, clock, broker_id=broker_id, seed=seed + i, capacity=capacity, state_file=state_file
        )
    return out


@dataclass
class PolicyConstraints:
    """The engine's constraints step: the policy in force (re-read when its file changes) evaluated
    against what was spent and is committed."""

    source: PolicySource
    db: Engine
    catalog: Catalog
    commit_hours: float = 1.0
    _routes: dict[frozenset[str], tuple[EgressRoute, ...]] = field(default_factory=dict)
    keeper: PolicyKeeper | None = None  # versions: records file changes, picks up other replicas' changes

    @property
    def policy(self) -> policies.Policy:
        """The policy in force (as last read; `__call__` re-reads the file)."""
        return self.source.policy

    def spend_so_far(self, now: datetime) -> dict[str, Decimal]:
        periods = {p for e in self.policy.experiments.values() for p in e.budgets.by_period()}
        bounds = {str(period): policies.period_bounds(period, now) for period in periods}
        earliest = min((start for start, _ in bounds.values()), default=now)
        latest = max((end for _, end in bounds.values()), default=now)
        with Session(self.db) as session:
            units = load_units(
                session,
                earliest,
                max(latest, now),
                as_of=now,
                include_unbilled=True,
                prices=StoredSpotPrices(session),
            )
        by_period = {}
        for period, (start, end) in bounds.items():
            by_period[period] = spend_in_period(
                units, period_start=start, period_end=end, now=now, commit_hours=self.commit_hours
            )
        return merge_period_keys(by_period)

    def egress_so_far(self, now: datetime) -> dict[str, float]:
        """Measured egress (`accounting.egress`): GB per source location this calendar month (the
        providers' tiers restart monthly), and per experiment in each period it has an egress cap."""
        month_start = policies.period_bounds("monthly", now)[0]
        with Session(self.db) as session:
            used = {k: gb for k, gb in egress_used_gb(session, month_start, now, {}).items() if ":" in k}
            periods = {p for e in self.policy.experiments.values() for p in e.egress_cap_gb.by_period()}
            for period in periods:
                start = policies.period_bounds(period, now)[0]
                for key, gb in egress_used_gb(session, start, now, {}, period=str(period)).items():
                    if ":" not in key:
                        used[key] = gb
        return used

    def routes(self, offerings: Sequence[Offering], groups: Sequence[DemandGroup]) -> tuple[EgressRoute, ...]:
        locations = frozenset(
            {o.location for o in offerings} | {g.data_location for g in groups if g.data_location}
        )
        if locations not in self._routes:
            self._routes[locations] = self.catalog.default_egress_routes(sorted(locations))
        return self._routes[locations]

    def __call__(
        self,
        groups: Sequence[DemandGroup],
        offerings: Sequence[Offering],
        fleet: Sequence[FleetUnit],
        now: datetime,
    ) -> PlanningConstraints:
        policy = self.source.current()
        if self.keeper is not None:
            policy = self.keeper.sync()
        return policies.evaluate(
            policy,
            now=now,
            spend_so_far=self.spend_so_far(now),
            egress_used_gb=self.egress_so_far(now),
            offerings_for_pricing=offerings,
            default_routes=self.routes(offerings, groups),
        )


def configured_sources(
    settings: Settings, offerings: Sequence[Offering], policy: policies.Policy
) -> list[WorkloadSource]:
    """The workload sources of the backends file (none without one). GPU models are spelled as the
    catalog and the policy spell them, whatever case Slurm's GRES types use."""
    if settings.backends_file is None:
        return []
    models = {o.gpu_model for o in offerings if o.gpu_model} | {
        m for e in policy.experiments.values() for m in (e.gpu.models or ())
    }
    return list(slurm_sources(settings.backends_file, gpu_models=sorted(models)))


def engine_settings(policy: policies.Policy, *, backends_retry: bool = False) -> EngineSettings:
    """The engine's timings from the policy. `backends_retry`: the backends retry throttling and
    timeouts themselves (the real ones do), so the actuator makes one call per attempt instead of
    multiplying their retries by its own."""
    timeouts = policy.facility.timeouts
    breaker = policy.facility.circuit_breaker
    return EngineSettings(
        actuator=ActuatorSettings(call_attempts=1) if backends_retry else ActuatorSettings(),
        reconcile=ReconcileSettings(
            boot_timeout=timedelta(minutes=timeouts.boot_timeout_minutes),
            idle_drain=timedelta(minutes=timeouts.idle_drain_minutes),
        ),
        circuit=CircuitSettings(
            threshold=breaker.failures_before_trip,
            unavailable_cooloff=timedelta(minutes=breaker.cool_off_minutes),
        ),
    )


@dataclass
class Broker:
    settings: Settings
    db: Engine
    catalog: Catalog
    policy_source: PolicySource
    clock: Clock
    store: Store
    backends: dict[str, Backend]
    engine: DecisionEngine
    constraints: PolicyConstraints
    offerings: dict[str, Offering]  # catalog and site offerings that a configured backend serves, by id
    policy_keeper: PolicyKeeper | None = None  # the policy's versions; applies API changes

    @property
    def policy(self) -> policies.Policy:
        """The policy in force now (the last good one read from the policy file)."""
        return self.policy_source.policy


def build_broker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    backends: dict[str, Backend] | None = None,
    sources: Sequence[WorkloadSource] | None = None,
    bus: Bus | None = None,
    demand: DemandFn | None = None,
    simulated_state_dir: Path | None = None,
    ids: IdSource | None = None,
    planner: PlannerFn | None = None,
) -> Broker:
    """Wire a broker: `backends` if given, else those of the backends file in the settings, else simulated
    ones serving the catalog and the policy's site offerings (the embedded default). Simulated units are
    kept in files under `simulated_state_dir` (default: `<state dir>/simulated`), so every process of
    this broker — `run`, `plan`, Slurm's resume program — and every restart sees the same fleet.
    `sources`: the pending workload; default: the Slurm queues (`kind = "slurm_queue"`) of the backends file."""
    clock = clock or SystemClock()
    db = open_database(settings.resolved_database_url())
    catalog = load_catalog()
    source = PolicySource.load(policy_path(settings), today=lambda: clock.now().date())
    keeper = PolicyKeeper(db, source, clock)
    keeper.start()  # the newest change wins: the file if it changed since, else the newest stored version
    policy = source.policy
    offerings = list(catalog.offerings) + policies.site_offerings(policy, now=clock.now())
    if backends is None and settings.backends_file is not None:
        backends = load_backends(
            settings.backends_file,
            broker_id=settings.broker_id,
            catalog=catalog.offerings,
            site_offerings=policies.site_offerings(policy),
        )
    if backends is None:
        backends = dict(
            simulated_backends(
                offerings,
                clock,
                broker_id=settings.broker_id,
                state_dir=simulated_state_dir or settings.state_dir / "simulated",
            )
        )
    if sources is None:
        sources = configured_sources(settings, offerings, policy)
    store = Store(db, clock, settings.broker_id, bus, ids)
    constraints = PolicyConstraints(source, db, catalog, keeper=keeper)
    # Open burst requests: those whose rule says so end (delivered, duration, deadline, max cost),
    # the rest ask only for what they have not got yet.
    # A dry run (`plan`, GET /v1/plan) sees the same demand but marks nothing done.
    demand_fn = demand or (lambda: settle_requests(db, clock.now(), write=not engine.dry_run_now).groups)
    engine = DecisionEngine(
        store=store,
        backends=backends,
        sources=sources,
        group=group_jobs,
        # worker processes kept for the broker's life, started at its first plan
        planner=planner or partial(plan, workers=Workers(settings.planner_workers)),
        constraints=constraints,
        demand=demand_fn,
        settings=replace(
            engine_settings(policy, backends_retry=settings.backends_file is not None),
            batch_idle_seconds=settings.batch_idle_seconds,
            batch_max_seconds=max(settings.batch_max_seconds, settings.batch_idle_seconds),
            wake_topics=tuple(settings.demand_topics),
        ),
        # Replicas sharing one PostgreSQL: one leads (advisory lock), the others stand by.
        leadership=Leadership(
            db,
            settings.broker_id,
            LeaseSettings(
                ttl_seconds=settings.leader_lease_seconds, standby_poll_seconds=settings.standby_poll_seconds
            ),
        ),
    )
    # Only what a configured backend can serve: admission must not promise a cloud we cannot reach.
    # ...and of a cloud, only the regions its backend is configured for.
    regions = {name: configured_regions(b) for name, b in backends.items()}
    by_id = {
        o.id: o
        for o in offerings
        if o.backend in backends and ((served := regions[o.backend]) is None or o.region in served)
    }
    source.on_change(lambda new: apply_policy_timings(engine, new))
    return Broker(settings, db, catalog, source, clock, store, backends, engine, constraints, by_id, keeper)


def apply_policy_timings(engine: DecisionEngine, policy: policies.Policy) -> None:
    """A reloaded policy's timeouts and circuit breaker settings take effect from the next cycle."""
    fresh = engine_settings(policy)
    engine.settings = replace(engine.settings, reconcile=fresh.reconcile, circuit=fresh.circuit)
    engine.reconciler.settings = fresh.reconcile
    engine.circuit.settings = fresh.circuit

"""One engine cycle — observe → plan → act → reconcile — and the loop that runs it on a timer or on demand.

Every collaborator is injected: workload sources, the grouping function, the policy evaluation,
the planner (pure), the backends, the clock and the bus. `run_cycle(dry_run=True)` plans and
stores nothing (what `provisioner plan` shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import structlog

from backends.base import AuthFailed, Backend, BackendError, OwnerReclaim
from provisioner.actuator import ActOutcome, Actuator, ActuatorSettings
from provisioner.bus import DEMAND_TOPIC, Subscription
from provisioner.circuit import CircuitBreaker, CircuitSettings, backend_key
from provisioner.clock import Clock
from provisioner.domain import (
    LIVE_STATES,
    DemandGroup,
    FleetUnit,
    Offering,
    PendingJob,
    Plan,
    PlanningConstraints,
)
from provisioner.fleet import Fleet, Listing
from provisioner.heartbeats import HEARTBEAT_TOPIC, record_message
from provisioner.leader import Leadership, LeadershipLost
from provisioner.reconciler import Reconciler, ReconcileReport, ReconcileSettings
from provisioner.sources.base import ReportsSkipped, SkippedJob, WorkloadSource
from provisioner.store import Store
from provisioner.wakeups import start_wakeups

log = structlog.get_logger(__name__)

GroupFn = Callable[[Sequence[PendingJob]], Sequence[DemandGroup]]
ConstraintsFn = Callable[
    [Sequence[DemandGroup], Sequence[Offering], Sequence[FleetUnit], datetime], PlanningConstraints
]
PlannerFn = Callable[
    [Sequence[DemandGroup], Sequence[Offering], Sequence[FleetUnit], PlanningConstraints], Plan
]
DemandFn = Callable[[], Sequence[DemandGroup]]  # extra demand, e.g. admitted burst requests
OfferingsFn = Callable[[], Awaitable[Sequence[Offering]]]  # e.g. the catalog, instead of backend.offerings()

MAX_IMMEDIATE_CYCLES = 3

T = TypeVar("T")


def no_constraints(
    groups: Sequence[DemandGroup], offerings: Sequence[Offering], fleet: Sequence[FleetUnit], now: datetime
) -> PlanningConstraints:
    """No policies at all: every offering allowed, no budgets."""
    return PlanningConstraints(now=now)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    interval_seconds: float = 60.0  # timer between cycles when nothing happens
    batch_idle_seconds: float = 0.25  # demand burst: wait until it has been quiet this long...
    batch_max_seconds: float = 5.0  # ...but never longer than this
    wake_topics: tuple[str, ...] = ()  # absolute MQTT topics whose messages are new demand
    max_replans: int = 2  # replans within one cycle after capacity/quota/auth failures
    actuator: ActuatorSettings = field(default_factory=ActuatorSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    circuit: CircuitSettings = field(default_factory=CircuitSettings)


@dataclass
class CycleReport:
    started_at: datetime
    dry_run: bool
    finished_at: datetime | None = None
    pending_jobs: int = 0
    skipped: list[SkippedJob] = field(default_factory=list)  # waiting, but no capacity would start them
    groups: list[DemandGroup] = field(default_factory=list)
    offerings: list[Offering] = field(default_factory=list)
    constraints: PlanningConstraints | None = None
    plan: Plan | None = None
    plan_ids: list[str] = field(default_factory=list)
    replans: int = 0
    act: ActOutcome = field(default_factory=ActOutcome)
    drained: list[str] = field(default_factory=list)
    reconcile: ReconcileReport = field(default_factory=ReconcileReport)
    reclaimed: dict[str, list[str]] = field(default_factory=dict)  # backend -> provider ids given back to owners
    errors: dict[str, str] = field(default_factory=dict)  # "<source or backend>:<step>" -> message

    @property
    def replan_needed(self) -> bool:
        """The reconciler freed demand (lost, stuck, interrupted): run the next cycle at once.

        Demand the actuator could not place was already replanned within this cycle; what is
        still unplaced waits for the timer, so a refusing backend never makes the loop spin.
        """
        return self.reconcile.replan_needed


class DecisionEngine:
    def __init__(
        self,
        *,
        store: Store,
        backends: Mapping[str, Backend],
        sources: Sequence[WorkloadSource],
        group: GroupFn,
        planner: PlannerFn,
        constraints: ConstraintsFn = no_constraints,
        demand: DemandFn | None = None,
        settings: EngineSettings | None = None,
        circuit: CircuitBreaker | None = None,
        leadership: Leadership | None = None,
        offerings: OfferingsFn | None = None,
    ) -> None:
        self.store = store
        self.clock: Clock = store.clock
        self.backends = dict(backends)
        self.sources = list(sources)
        self.group = group
        self.planner = planner
        self.constraints = constraints
        self.demand = demand
        self.settings = settings or EngineSettings()
        self.dry_run_now = False  # whether the cycle now asking for demand is a dry run
        self.circuit = circuit or CircuitBreaker(store.db, self.clock, self.settings.circuit)
        self.actuator = Actuator(store, self.circuit, self.backends, self.clock, self.settings.actuator)
        self.reconciler = Reconciler(store, self.actuator, self.circuit, self.settings.reconcile)
        self.fleet = Fleet(heartbeat_ttl=self.settings.reconcile.heartbeat_ttl)
        self.leadership = leadership
        if leadership is not None:
            # The lease is checked before every provider call and every acting write is fenced.
            self.actuator.guard = leadership.check
            store.fence = leadership.fence
        self._wake_event = asyncio.Event()  # set by new demand; a wake before run_forever counts too
        self.offerings_fn = offerings

    # --- observe -------------------------------------------------------------------------------

    async def _pending(self, report: CycleReport) -> list[PendingJob]:
        jobs: list[PendingJob] = []
        for source in self.sources:
            try:
                jobs.extend(await source.pending())
                if isinstance(source, ReportsSkipped):
                    report.skipped.extend(source.skipped)
            except Exception as exc:  # one broken source must not stop planning for the others
                report.errors[f"{source.name}:pending"] = str(exc)
                log.warning("source.failed", source=source.name, error=str(exc))
        return jobs

    async def _observe_backends(
        self, report: CycleReport, *, dry_run: bool = False
    ) -> tuple[dict[str, Listing | None], list[Offering]]:
        listings: dict[str, Listing | None] = {}
        offerings: list[Offering] = []
        for name, backend in self.backends.items():
            listings[name] = None
            if self.circuit.is_open(backend_key(name)):
                continue  # disabled or backed off: do not hammer it, and do not judge it by silence
            try:
                if isinstance(backend, OwnerReclaim) and not dry_run:
                    # owner work first: evacuate before listing, so the listing shows it and the
                    # plan does not count on those units
                    reclaimed = await backend.evacuate_for_owners()
                    if reclaimed:
                        report.reclaimed[name] = reclaimed
                        log.info("backend.owner_reclaim", backend=name, units=reclaimed)
                resources = await backend.list_resources()
                listings[name] = Listing(name, self.clock.now(), resources)
                if self.offerings_fn is None:
                    offerings.extend(await backend.offerings())
            except AuthFailed as exc:
                await self.actuator.disable_backend(name, exc)
                report.errors[f"{name}:observe"] = str(exc)
            except BackendError as exc:
                report.errors[f"{name}:observe"] = str(exc)
                log.warning("backend.observe_failed", backend=name, error=str(exc))
            except LeadershipLost:
                raise
            except Exception as exc:  # an answer nobody expected: skip this backend this cycle only
                listings[name] = None
                report.errors[f"{name}:observe"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("backend.observe_unexpected", backend=name, error_type=type(exc).__name__)
                self.circuit.record_failure(backend_key(name), f"unexpected listing: {type(exc).__name__}")
        if self.offerings_fn is not None:
            # Only offerings of configured backends that are listed (so usable) this cycle.
            usable = {name for name, listing in listings.items() if listing is not None}
            offerings = [o for o in await self.offerings_fn() if o.backend in usable]
        return listings, offerings

    async def _step(self, report: CycleReport, name: str, step: Awaitable[T]) -> T | None:
        """Run one step of the cycle; a failure is logged and reported and the cycle goes on."""
        try:
            return await step
        except LeadershipLost:
            raise
        except Exception as exc:
            report.errors[f"engine:{name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.error("cycle.step_failed", step=name, error_type=type(exc).__name__, error=str(exc)[:300])
            return None

    # --- plan ----------------------------------------------------------------------------------

    def fleet_units(self) -> list[FleetUnit]:
        """The fleet as the planner sees it, each unit at the price in force now (billing's)."""
        now = self.clock.now()
        return self.fleet.units(now, self.store.prices_in_force(self.fleet.rows, now))

    def _constraints(
        self, groups: Sequence[DemandGroup], offerings: Sequence[Offering], units: Sequence[FleetUnit]
    ) -> PlanningConstraints:
        now = self.clock.now()
        base = self.constraints(groups, offerings, units, now)
        unavailable = base.unavailable_offerings | self.circuit.unavailable_offerings(offerings)
        return dataclasses.replace(base, unavailable_offerings=unavailable, now=base.now or now)

    # --- the cycle -----------------------------------------------------------------------------

    async def run_cycle(self, *, dry_run: bool = False) -> CycleReport:
        started = time.perf_counter()
        with self.leadership.acting() if self.leadership is not None else contextlib.nullcontext():
            report = await self._cycle(dry_run)
        if not dry_run:
            # Stored and published like every event: metrics time the cycles from it.
            await self.store.event(
                "cycle.finished",
                self.store.broker_id,
                {
                    "seconds": round(time.perf_counter() - started, 4),
                    "dry_run": dry_run,
                    "pending_jobs": report.pending_jobs,
                    "created": len(report.act.created),
                    "failed": len(report.act.failed),
                    "released": len(report.reconcile.released),
                },
            )
        return report

    async def _cycle(self, dry_run: bool) -> CycleReport:
        report = CycleReport(started_at=self.clock.now(), dry_run=dry_run)
        jobs = await self._pending(report)
        report.pending_jobs = len(jobs)
        groups = list(self.group(jobs))
        if self.demand is not None:
            # set right before the call (no await in between): a demand step may write (a burst request
            # that ended is marked done) only when the cycle acts, never in a dry run
            self.dry_run_now = dry_run
            groups.extend(self.demand())
        report.groups = groups
        listings, offerings = await self._observe_backends(report, dry_run=dry_run)
        report.offerings = offerings
        self.fleet.refresh(self.store.resources(states=LIVE_STATES))
        for listing in listings.values():
            if listing is not None:
                self.fleet.set_listing(listing)
        units = self.fleet_units()
        if dry_run:
            report.constraints = self._constraints(groups, offerings, units)
            report.plan = self.planner(groups, offerings, units, report.constraints)
            report.finished_at = self.clock.now()
            return report
        try:
            constraints = self._constraints(groups, offerings, units)
            report.constraints = constraints
            plan: Plan | None = self.planner(groups, offerings, units, constraints)
        except LeadershipLost:
            raise
        except Exception as exc:  # no plan this cycle; the fleet is still reconciled below
            report.errors["engine:plan"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.error("cycle.step_failed", step="plan", error_type=type(exc).__name__, error=str(exc)[:300])
            plan = None
        report.plan = plan

        by_id = {o.id: o for o in offerings}
        experiments = {g.id: g.experiment for g in groups}
        request_ids = {g.id: g.request_id for g in groups if g.request_id}
        # Each step isolated: whatever one backend or one intent answers, reconciliation still runs
        # (a cancelled request's units are released even while creates keep failing).
        await self._step(report, "resume", self.actuator.resume_requested(by_id, report.act))
        if plan is not None and await self._step(report, "save_plan", self._save_plan(report, groups, plan)):
            await self._step(
                report, "act", self.actuator.execute(plan.items, by_id, experiments, report.act, request_ids)
            )
            report.drained = await self._step(report, "drain", self.actuator.drain(plan.drains)) or []
            await self._step(
                report, "replan", self._replan(report, groups, offerings, by_id, experiments, request_ids)
            )
        reconciled = await self._step(
            report, "reconcile", self.reconciler.reconcile(self.fleet, listings, by_id)
        )
        if reconciled is not None:
            report.reconcile = reconciled
        report.errors.update({f"resource:{rid}": why for rid, why in report.act.errors.items()})
        report.errors.update({f"reconcile:{k}": why for k, why in report.reconcile.errors.items()})
        report.finished_at = self.clock.now()
        log.info(
            "cycle.done",
            jobs=report.pending_jobs,
            groups=len(groups),
            created=len(report.act.created),
            failed=len(report.act.failed),
            replans=report.replans,
            lost=len(report.reconcile.lost),
            released=len(report.reconcile.released),
        )
        return report

    async def _save_plan(self, report: CycleReport, groups: Sequence[DemandGroup], plan: Plan) -> bool:
        self.store.save_groups(groups)
        report.plan_ids.append(await self.store.save_plan(plan))
        return True

    async def _replan(
        self,
        report: CycleReport,
        groups: Sequence[DemandGroup],
        offerings: Sequence[Offering],
        by_id: Mapping[str, Offering],
        experiments: Mapping[str, str],
        request_ids: Mapping[str, str],
    ) -> None:
        """Demand a backend refused (capacity, quota, auth) goes to the next offering in this cycle."""
        groups_by_id = {g.id: g for g in groups}
        handled = 0
        while len(report.act.unplaced) > handled and report.replans < self.settings.max_replans:
            batch = report.act.unplaced[handled:]
            handled = len(report.act.unplaced)
            jobs_by_group: dict[str, int] = {}
            for u in batch:
                jobs_by_group[u.group_id] = jobs_by_group.get(u.group_id, 0) + u.jobs
            regroup = [
                dataclasses.replace(groups_by_id[gid], jobs=n)
                for gid, n in jobs_by_group.items()
                if gid in groups_by_id and n > 0
            ]
            if not regroup:
                break
            # Units already serving these groups were counted by the first plan: leave them out.
            self.fleet.refresh(self.store.resources(states=LIVE_STATES))
            units = [u for u in self.fleet_units() if u.group_id not in jobs_by_group]
            constraints = self._constraints(regroup, offerings, units)
            plan = self.planner(regroup, offerings, units, constraints)
            report.replans += 1
            report.plan_ids.append(
                await self.store.save_plan(
                    plan, summary={"replan_of": report.plan_ids[0], "round": report.replans}
                )
            )
            await self.actuator.execute(plan.items, by_id, experiments, report.act, request_ids)

    # --- the loop ------------------------------------------------------------------------------

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Cycle on the timer; new demand on the bus starts a cycle after a short batching window.

        Waiting uses real time (asyncio), not the injected clock: a simulation drives `run_cycle`.
        """
        stop = stop or asyncio.Event()
        wake = self._wake_event
        wakeups = await start_wakeups(self.store.bus, self.settings.wake_topics, self.sources, wake.set)
        sub: Subscription | None = None
        beats: Subscription | None = None
        reader: asyncio.Task[None] | None = None
        beat_reader: asyncio.Task[None] | None = None
        if self.store.bus is not None:
            sub = await self.store.bus.subscribe(DEMAND_TOPIC)

            async def read(s: Subscription) -> None:
                async for _ in s:
                    wake.set()

            reader = asyncio.create_task(read(sub), name="engine-demand-reader")
            beats = await self.store.bus.subscribe(HEARTBEAT_TOPIC)
            beat_reader = asyncio.create_task(self._read_heartbeats(beats), name="engine-heartbeat-reader")
        immediate_in_a_row = 0
        renewer: asyncio.Task[None] | None = None
        if self.leadership is not None:
            renewer = asyncio.create_task(self._renew_lease(self.leadership, stop), name="engine-lease")
        try:
            while not stop.is_set():
                if self.leadership is not None and not self.leadership.ensure():
                    # Stand by: only the leader acts; try again soon, so a take-over takes seconds.
                    poll = self.leadership.settings.standby_poll_seconds
                    await self._wait(wake, stop, timeout=min(poll, self.settings.interval_seconds))
                    continue
                try:
                    report = await self.run_cycle()
                    immediate = report.replan_needed
                except LeadershipLost as exc:
                    log.warning("leader.deposed", error=str(exc)[:200])
                    immediate = False
                except Exception:  # a bug in one cycle must not stop the broker: log it, wait, go on
                    log.exception("cycle.failed")
                    immediate = False
                # Bounded, so a unit lost again and again cannot turn the loop into a spin.
                if immediate and immediate_in_a_row < MAX_IMMEDIATE_CYCLES:
                    immediate_in_a_row += 1
                    continue
                immediate_in_a_row = 0
                await self._wait(wake, stop)
        finally:
            await wakeups.close()
            for task in (reader, beat_reader, renewer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if sub is not None:
                await sub.close()
            if beats is not None:
                await beats.close()
            if self.leadership is not None:
                self.leadership.release()

    def wake(self) -> None:
        """New demand (e.g. a poke on the wake socket): start a cycle after the batching window (at
        once if `run_forever` is not waiting yet). Call it from the engine's event loop."""
        self._wake_event.set()

    async def _read_heartbeats(self, beats: Subscription) -> None:
        """Pilot/worker heartbeats from the bus, recorded by every replica (they are facts, not actions)."""
        async for message in beats:
            try:
                record_message(self.store, message.payload)
            except Exception as exc:  # a store hiccup must not end the reader
                log.warning("heartbeat.record_failed", error_type=type(exc).__name__)

    @staticmethod
    async def _renew_lease(leadership: Leadership, stop: asyncio.Event) -> None:
        """Keep the lease fresh while a long cycle waits on providers (a third of its time to live)."""
        period = max(leadership.settings.ttl_seconds / 3, 0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)
            if leadership.is_leader:
                leadership.ensure()

    async def _wait(self, wake: asyncio.Event, stop: asyncio.Event, *, timeout: float | None = None) -> None:
        st = self.settings
        waiters = [asyncio.create_task(wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(
                waiters,
                timeout=st.interval_seconds if timeout is None else timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for t in waiters:
                t.cancel()
        if not wake.is_set() or stop.is_set():
            return
        # Karpenter's batcher: gather a burst of demand into one decision.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + st.batch_max_seconds
        while True:
            wake.clear()
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(st.batch_idle_seconds, left))
            except TimeoutError:
                return

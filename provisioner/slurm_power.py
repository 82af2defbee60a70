"""The glue between Slurm power saving and the broker: each resumed CLOUD node is one broker resource.

`SlurmPower.place` (ResumeProgram) places a node the way the engine places a plan item: the cheapest
usable cloud offering that fits the node's shape, an intent committed before the backend call
(idempotency token), the actuator's retries, circuit breaker and events; a node that already has a
live resource gets no second one. `release` (SuspendProgram) releases the node's resources through
the same actuator, and `sweep` those of nodes Slurm powered down without a suspend. The resources
belong to the group `slurm-node:<node>` and carry the `provisioner-slurm-node` tag: the planner
leaves them to Slurm (no IDLE or NO_DEMAND drain), the reconciler still finds them lost, stuck or
orphaned. While Slurm holds a node its resource counts as busy, so the reconciler's idle rule
leaves it alone too: Slurm's SuspendTime, not ours, decides when it is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

from backends.base import Backend, BackendResource, ProvisionRequest
from backends.slurm.burst import (
    TAG_SLURM_NODE,
    OfferingChooser,
    Placement,
    ResumeIntent,
    cheapest_offering,
    fits,
    node_group_id,
    node_of_group,
)
from backends.slurm.client import SlurmNode
from provisioner.actuator import ActOutcome, Actuator, ActuatorSettings
from provisioner.broker import Broker
from provisioner.circuit import CircuitBreaker
from provisioner.domain import (
    LIVE_STATES,
    CostBreakdown,
    DemandGroup,
    Market,
    Offering,
    Plan,
    PlanItem,
    ResourceState,
)
from provisioner.fleet import unit_of
from provisioner.model import ResourceRow, from_micro, row_time
from provisioner.settings import Settings
from provisioner.store import Store

log = structlog.get_logger(__name__)

CLOUD_MARKETS = frozenset({Market.ON_DEMAND, Market.SPOT})
# A resource in these states stands behind the node; a draining one is on its way out.
UP_STATES = frozenset({ResourceState.REQUESTED, ResourceState.PROVISIONING, ResourceState.RUNNING})
RELEASE_REASON = "slurm power down"
SWEEP_MIN_AGE = timedelta(minutes=2)  # a resource younger than this may belong to a resume under way
# slurmctld waits on the program: retry a throttled call briefly, the engine retries the rest later
RESUME_ACTUATOR = ActuatorSettings(call_attempts=3, backoff_initial_seconds=0.5, backoff_max_seconds=4.0)


def simulated_state_dir(settings: Settings) -> Path:
    """Where simulated backends keep their units, so resume, suspend and the engine share one fleet."""
    return settings.state_dir / "simulated"


@contextlib.contextmanager
def host_lock(path: Path) -> Iterator[None]:
    """Exclusive among the processes on this host that take it (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What admission says about a node's demand: the offering to use, or why none may be used."""

    offering: Offering | None
    reason: str = ""


AdmitNode = Callable[[DemandGroup, Sequence[Offering]], Verdict]


def refusal(plan: Plan, group_id: str) -> str:
    """Why the planner serves none of a group: its unserved reason and the best rejected alternatives."""
    explanation = next((e for e in plan.explanations if e.group_id == group_id), None)
    if explanation is None:
        return "refused by the planner"
    head = explanation.unserved_reason.value if explanation.unserved_reason else "not served"
    alternatives = "; ".join(
        f"{r.offering_id}: {r.reason.value}{f' ({r.detail})' if r.detail else ''}"
        for r in explanation.rejected[:2]
    )
    return f"{head} for {explanation.experiment}" + (f" ({alternatives})" if alternatives else "")


def policy_admission(broker: Broker) -> AdmitNode:
    """Admission as the engine does it: the policy's limits for the node's experiment (budgets, spend
    caps, allowed backends, markets, architectures, GPU rules, quotas) evaluated against the spend so
    far and the live fleet, and the planner's choice among the offerings given."""

    def admit(demand: DemandGroup, offerings: Sequence[Offering]) -> Verdict:
        now = broker.clock.now()
        live = broker.store.resources(states=LIVE_STATES)
        price = broker.store.prices_in_force(live, now)
        fleet = [unit_of(r, now, price_micro_per_hour=price[r.id]) for r in live]
        base = broker.constraints([demand], offerings, fleet, now)
        constraints = dataclasses.replace(
            base,
            unavailable_offerings=base.unavailable_offerings
            | broker.engine.circuit.unavailable_offerings(offerings),
        )
        # what fits the node, so a refusal names the policy's reason, not a shape that never fitted
        offerings = [o for o in offerings if fits(o, demand)]
        limits = constraints.experiments.get(demand.experiment)
        if limits is not None:
            # the experiment's own rules first, so a refusal names what stopped an allowed offering
            offerings = [
                o
                for o in offerings
                if (limits.allowed_backends is None or o.backend in limits.allowed_backends)
                and (limits.allowed_markets is None or o.market in limits.allowed_markets)
                and (limits.allowed_archs is None or o.arch in limits.allowed_archs)
            ]
            if not offerings:
                return Verdict(
                    None, f"no offering of a backend, market and architecture {demand.experiment} may use"
                )
        plan = broker.engine.planner([demand], offerings, fleet, constraints)
        by_id = {o.id: o for o in offerings}
        for item in plan.items:
            if item.group_id == demand.id and item.units > 0 and item.offering_id in by_id:
                return Verdict(by_id[item.offering_id])
        return Verdict(None, refusal(plan, demand.id))

    return admit


@dataclass(frozen=True, slots=True)
class PowerSettings:
    experiment: str | None = None  # account charged for every node; None: the node's partition
    markets: frozenset[Market] = CLOUD_MARKETS  # a Slurm node is a VM: no pilots, no backfill
    backends: frozenset[str] | None = None  # only these backends (None: every configured one)
    offerings_to_try: int = 3  # per node, when an offering refuses (capacity, quota...)
    lock_file: Path | None = None  # serialises concurrent resume/suspend programs on this host


class NodeTaggedBackend:
    """A backend whose creates for a `slurm-node:` group carry the node's name as a tag."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        node = node_of_group(request.group_id)
        if node is not None:
            request = dataclasses.replace(request, tags={**request.tags, TAG_SLURM_NODE: node})
        return await self.inner.provision(request)

    async def list_resources(self) -> list[BackendResource]:
        return await self.inner.list_resources()

    async def release(self, provider_id: str) -> None:
        await self.inner.release(provider_id)

    async def offerings(self) -> list[Offering]:
        return await self.inner.offerings()

    async def close(self) -> None:
        await self.inner.close()


@runtime_checkable
class MarksBusy(Protocol):
    """A backend that is told whether a unit runs work (the simulated ones)."""

    def set_busy(self, key: str, busy: bool) -> None: ...


def plan_item(demand: DemandGroup, offering: Offering) -> PlanItem:
    """One unit of `offering` for the node's one-job group, priced like the planner prices it: an
    estimate at the offering's quoted price for the decision, not money spent (`accounting.billing`)."""
    hours = Decimal(str(demand.walltime_hours))
    hs23_hours = Decimal(offering.cores) * Decimal(str(offering.hs23_per_core))
    per_hs23 = offering.price_per_hour / hs23_hours if hs23_hours > 0 else Decimal(0)
    return PlanItem(
        group_id=demand.id,
        offering_id=offering.id,
        units=1,
        jobs=1,
        hours=demand.walltime_hours,
        cost=offering.price_per_hour * hours,
        cost_per_hs23_hour=CostBreakdown(compute=per_hs23),
    )


class SlurmPower:
    """Resume and suspend Slurm CLOUD nodes as broker resources."""

    def __init__(
        self,
        store: Store,
        circuit: CircuitBreaker,
        backends: Mapping[str, Backend],
        offerings: Iterable[Offering],
        settings: PowerSettings | None = None,
        actuator_settings: ActuatorSettings = RESUME_ACTUATOR,
        named_experiments: Callable[[], Collection[str]] | None = None,
        admit: AdmitNode | None = None,
    ) -> None:
        """`admit`: the policy's word on each node (default: none, the cheapest fitting offering)."""
        self.store = store
        # the policy's experiments now; None: no policy (every experiment may resume nodes)
        self.named_experiments = named_experiments
        self.circuit = circuit
        self.backends = dict(backends)
        self.settings = settings or PowerSettings()
        st = self.settings
        self.known = {o.id: o for o in offerings if o.backend in self.backends}
        self.candidates = [
            o
            for o in self.known.values()
            if o.market in st.markets and (st.backends is None or o.backend in st.backends)
        ]
        tagged: dict[str, Backend] = {n: NodeTaggedBackend(b) for n, b in self.backends.items()}
        self.actuator = Actuator(store, circuit, tagged, store.clock, actuator_settings)
        self._lock = asyncio.Lock()
        self.admit = admit

    @classmethod
    def from_broker(cls, broker: Broker, settings: PowerSettings | None = None) -> SlurmPower:
        """Resume and suspend for this broker, every node admitted by its policy like any other demand."""
        return cls(
            broker.store,
            broker.engine.circuit,
            broker.backends,
            broker.offerings.values(),
            settings,
            named_experiments=lambda: broker.policy_source.current().experiments.keys(),
            admit=policy_admission(broker),
        )

    # --- reading ---------------------------------------------------------------------------------

    def resources(self, node: str, states: Iterable[ResourceState] = LIVE_STATES) -> list[ResourceRow]:
        """The node's resources in these states, oldest first."""
        group = node_group_id(node)
        return [r for r in self.store.resources(states=states) if r.group_id == group]

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        # Slurm may run two resume programs at once: check-then-create must not race (in this
        # process: the asyncio lock; across processes on this host: the file lock).
        async with self._lock:
            path = self.settings.lock_file
            if path is None:
                yield
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                await asyncio.to_thread(fcntl.flock, fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    # --- resume ----------------------------------------------------------------------------------

    async def place(self, node: SlurmNode, demand: DemandGroup) -> ResumeIntent:
        """Give the node a resource, unless it has one (requested, provisioning or running) already.

        Fails closed: an experiment the policy does not name gets no new resource."""
        if self.named_experiments is not None and demand.experiment not in (
            named := self.named_experiments()
        ):
            known = ", ".join(sorted(named)) or "none"
            log.warning("slurm.resume.experiment_not_in_policy", node=node.name, experiment=demand.experiment)
            return ResumeIntent(
                node.name,
                demand,
                None,
                None,
                Placement.NO_OFFERING,
                reason=f"experiment '{demand.experiment}' is not in the policy (known: {known})",
            )
        async with self._locked():
            up = self.resources(node.name, UP_STATES)
            for row in up:
                if ResourceState(row.state) in (ResourceState.PROVISIONING, ResourceState.RUNNING):
                    self._mark_busy(row, busy=True)
                    return self._intent(node, demand, row, Placement.ALREADY_LIVE)
            tried: set[str] = set()
            for row in up:  # a requested intent (a crash, or a throttled call): same token again
                retried = await self._retry_intent(node, demand, row)
                if retried is not None:
                    return retried
                tried.add(row.offering_id)
            return await self._create(node, demand, tried)

    def _intent(
        self, node: SlurmNode, demand: DemandGroup, row: ResourceRow, placement: Placement, reason: str = ""
    ) -> ResumeIntent:
        return ResumeIntent(
            node=node.name,
            demand=demand,
            offering_id=row.offering_id,
            price_per_hour=from_micro(row.price_micro_per_hour),  # as created: the decision's, not billing's
            placement=placement,
            resource_id=row.id,
            reason=reason,
        )

    async def _retry_intent(
        self, node: SlurmNode, demand: DemandGroup, row: ResourceRow
    ) -> ResumeIntent | None:
        """Retry a `requested` row; None when it failed and another offering should be tried."""
        offering = self.known.get(row.offering_id)
        if offering is None:
            return self._intent(node, demand, row, Placement.PENDING, "offering not served now")
        await self.actuator.resume_requested({offering.id: offering}, ActOutcome())
        now = self.store.get(row.id)
        state = ResourceState(now.state) if now is not None else ResourceState.FAILED
        if now is not None and state in (ResourceState.PROVISIONING, ResourceState.RUNNING):
            self._mark_busy(now, busy=True)
            return self._intent(node, demand, now, Placement.CREATED)
        if now is not None and state == ResourceState.REQUESTED:
            return self._intent(node, demand, now, Placement.PENDING, now.failure_reason or "")
        return None

    def _choose(self, demand: DemandGroup, tried: set[str]) -> Offering | str | None:
        """The offering to try next; a string: the policy's refusal; None: nothing fits."""
        if self.admit is None:
            return self._chooser(tried)(demand)
        left = [o for o in self.candidates if o.id not in tried]
        if not left:
            return None
        verdict = self.admit(demand, left)
        if verdict.offering is None:
            fits = self._chooser(tried)(demand)
            return verdict.reason if fits is not None else None
        return verdict.offering

    def _chooser(self, exclude: set[str]) -> OfferingChooser:
        blocked = self.circuit.unavailable_offerings(self.candidates)
        return cheapest_offering(o for o in self.candidates if o.id not in exclude and o.id not in blocked)

    async def _create(self, node: SlurmNode, demand: DemandGroup, tried: set[str]) -> ResumeIntent:
        reasons: list[str] = []
        for _ in range(max(1, self.settings.offerings_to_try)):
            offering = self._choose(demand, tried)
            if isinstance(offering, str):
                if reasons:  # the policy's choices were tried and refused by their backends
                    break
                log.warning(
                    "slurm.resume.refused", node=node.name, experiment=demand.experiment, reason=offering
                )
                return ResumeIntent(node.name, demand, None, None, Placement.REFUSED, reason=offering)
            if offering is None:
                break
            tried.add(offering.id)
            outcome = await self.actuator.execute(
                [plan_item(demand, offering)], {offering.id: offering}, {demand.id: demand.experiment}
            )
            accepted = outcome.created or outcome.pending
            if accepted:
                row = self.store.get(accepted[0])
                assert row is not None, f"resource {accepted[0]}: the actuator reported it, the store lost it"
                if outcome.created:
                    self._mark_busy(row, busy=True)
                    return self._intent(node, demand, row, Placement.CREATED)
                return self._intent(node, demand, row, Placement.PENDING, row.failure_reason or "")
            why = outcome.unplaced[0].reason if outcome.unplaced else "refused"
            reasons.append(f"{offering.id}: {why}")
            log.warning("slurm.resume.offering_refused", node=node.name, offering=offering.id, reason=why)
        if not reasons:
            return ResumeIntent(
                node.name, demand, None, None, Placement.NO_OFFERING, reason="no usable offering fits"
            )
        return ResumeIntent(node.name, demand, None, None, Placement.FAILED, reason="; ".join(reasons))

    def _mark_busy(self, row: ResourceRow, *, busy: bool) -> None:
        """Slurm holds (or gave back) the node: say so on the row, and to a backend that is told."""
        self.store.observe(row, busy=busy)
        backend = self.backends.get(row.backend)
        if isinstance(backend, MarksBusy) and row.provider_id:
            # A real node's own agent would report it; the simulated cloud cannot see Slurm's use.
            with contextlib.suppress(KeyError, ValueError):  # unit gone or terminated: nothing to tell
                backend.set_busy(row.id, busy)

    # --- suspend ---------------------------------------------------------------------------------

    async def release(self, node: str) -> list[str]:
        """Release every live resource of the node (none: nothing to do); returns those released.

        A release the backend refuses leaves the row draining and not busy: the reconciler retries it.
        """
        released = []
        async with self._locked():
            for row in self.resources(node):
                self._mark_busy(row, busy=False)
                current = self.store.get(row.id) or row
                if await self.actuator.release(current, RELEASE_REASON):
                    released.append(row.id)
                else:
                    log.warning("slurm.suspend.release_pending", node=node, resource=row.id)
        if released:
            log.info("slurm.suspend.released", node=node, resources=released)
        return released

    async def sweep(self, nodes: Iterable[SlurmNode], *, min_age: timedelta = SWEEP_MIN_AGE) -> list[str]:
        """Release the resources of nodes Slurm reports powered down: a suspend that never ran (a
        crashed program, a restarted slurmctld) must not leave a VM behind. Returns those released.

        Only CLOUD nodes powered down and not powering up, and only resources older than `min_age`,
        so a resume under way is never undone.
        """
        down = {n.name for n in nodes if n.cloud and n.powered_down and "POWERING_UP" not in n.flags}
        cutoff = self.store.clock.now() - min_age
        stale = {
            node
            for r in self.store.resources(states=LIVE_STATES)
            if (node := node_of_group(r.group_id)) in down and (row_time(r.created_at) or cutoff) < cutoff
        }
        released = []
        for node in sorted(stale):
            log.warning("slurm.sweep.powered_down_node_has_resources", node=node)
            released.extend(await self.release(node))
        return released

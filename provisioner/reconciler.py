"""The reconciler: each cycle, compare every backend's listing with the resources table and act.

One small rule per reason (Karpenter's disruption controllers), all reading the same `Fleet`:
intents found on the provider, boots that finished, boots stuck past the timeout, units the
provider terminated (walltime, spot, owner), interruption notices, idle units, drained units to
release, tracked units gone from the listing (lost, after a grace period), and untracked units
carrying our tag (orphans: adopted or released by `orphan_policy`). A backend whose listing
failed this cycle is left alone: no listing is not the same as an empty listing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import structlog

from backends.base import TAG_BROKER, BackendError, BackendResource, ProviderState
from provisioner.actuator import Actuator
from provisioner.circuit import CircuitBreaker, offering_key
from provisioner.domain import LIVE_STATES, DrainReason, Market, Offering, ResourceState
from provisioner.fleet import HEARTBEAT_TTL, Fleet, Listing, busy_signal
from provisioner.leader import LeadershipLost
from provisioner.model import ResourceRow, row_time
from provisioner.store import Store

log = structlog.get_logger(__name__)

GONE = frozenset({ProviderState.TERMINATED, ProviderState.FAILED})
ENDED_BY_ITSELF = "ended by itself: no work left"


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    orphan_policy: Literal["release", "adopt"] = "release"
    lost_grace: timedelta = timedelta(minutes=10)  # listings are eventually consistent
    boot_timeout: timedelta = timedelta(minutes=20)
    # HPC pilots wait in a queue: their "boot" may legitimately take much longer
    boot_timeout_by_market: Mapping[str, timedelta] = field(
        default_factory=lambda: {str(Market.ALLOCATION): timedelta(hours=48)}
    )
    idle_drain: timedelta = timedelta(minutes=15)
    heartbeat_ttl: timedelta = HEARTBEAT_TTL  # a pilot/worker heartbeat older than this is no signal
    walltime_slack: timedelta = timedelta(minutes=5)
    history: timedelta = timedelta(days=2)  # failed/lost rows older than this are not rechecked

    def boot_timeout_for(self, market: str) -> timedelta:
        return self.boot_timeout_by_market.get(market, self.boot_timeout)


@dataclass
class ReconcileReport:
    resolved_intents: list[str] = field(default_factory=list)
    booted: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    reappeared: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    idle_drained: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    walltime_ended: list[str] = field(default_factory=list)
    ended_by_itself: list[str] = field(default_factory=list)  # e.g. pilots that ran out of work
    adopted: list[str] = field(default_factory=list)
    orphans_released: list[str] = field(default_factory=list)  # provider ids
    replan_groups: set[str] = field(default_factory=set)
    skipped_backends: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # backend, resource or provider id -> error

    @property
    def replan_needed(self) -> bool:
        return bool(self.replan_groups)


class Reconciler:
    def __init__(
        self,
        store: Store,
        actuator: Actuator,
        circuit: CircuitBreaker,
        settings: ReconcileSettings | None = None,
    ) -> None:
        self.store = store
        self.actuator = actuator
        self.circuit = circuit
        self.settings = settings or ReconcileSettings()

    @property
    def now(self) -> datetime:
        return self.store.clock.now()

    async def reconcile(
        self,
        fleet: Fleet,
        listings: Mapping[str, Listing | None],
        offerings: Mapping[str, Offering],
    ) -> ReconcileReport:
        """`listings[b]` is None when backend b could not be listed this cycle."""
        report = ReconcileReport()
        for backend, listing in listings.items():
            if listing is None:
                report.skipped_backends.append(backend)
                continue
            try:
                await self._reconcile_backend(fleet, listing, offerings, report)
            except LeadershipLost:
                raise
            except Exception as exc:  # one backend's surprise must not stop the others' reconciliation
                report.errors[backend] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("reconcile.backend_failed", backend=backend, error_type=type(exc).__name__)
        fleet.refresh(self.store.resources(states=LIVE_STATES))
        return report

    async def _reconcile_backend(
        self,
        fleet: Fleet,
        listing: Listing,
        offerings: Mapping[str, Offering],
        report: ReconcileReport,
    ) -> None:
        now = self.now
        horizon = now - self.settings.history
        rows = [
            r
            for r in self.store.resources(backend=listing.backend)
            if ResourceState(r.state) != ResourceState.RELEASED
            and (
                ResourceState(r.state) not in (ResourceState.FAILED, ResourceState.LOST)
                or (row_time(r.state_since) or now) >= horizon
            )
        ]
        by_rid = listing.by_resource_id()
        by_pid = listing.by_provider_id()
        matched: set[str] = set()  # provider ids accounted for by a row
        for row in rows:
            entry = (by_pid.get(row.provider_id) if row.provider_id else None) or by_rid.get(row.id)
            if entry is not None:
                matched.add(entry.provider_id)
                fleet.missing_since.pop(row.id, None)
            try:
                await self._reconcile_row(fleet, row, entry, report)
            except LeadershipLost:
                raise
            except Exception as exc:  # one row's surprise: the next cycle tries it again
                report.errors[row.id] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("reconcile.row_failed", resource=row.id, error_type=type(exc).__name__)
        for entry in listing.resources:
            if entry.provider_id not in matched:
                try:
                    await self._untracked(listing.backend, entry, offerings, report)
                except LeadershipLost:
                    raise
                except Exception as exc:
                    report.errors[entry.provider_id] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    log.error(
                        "reconcile.untracked_failed",
                        provider_id=entry.provider_id,
                        error_type=type(exc).__name__,
                    )

    async def _reconcile_row(
        self, fleet: Fleet, row: ResourceRow, entry: BackendResource | None, report: ReconcileReport
    ) -> None:
        state = ResourceState(row.state)
        if state == ResourceState.REQUESTED:
            if entry is not None:
                await self._resolve_intent(row, entry, report)
            return  # otherwise the actuator retries it with the same token
        if state == ResourceState.FAILED:
            if entry is not None and entry.state not in GONE:
                await self._release(
                    row, "failed unit still exists on the provider", report, provider_id=entry.provider_id
                )
            return
        if state == ResourceState.LOST:
            await self._recheck_lost(row, entry, report)
            return
        if entry is None:
            await self._missing(fleet, row, report)
            return
        # A launch time is the provider's billing start once the unit is past pending (EC2 fills it in
        # while pending too); recorded whatever our state, so a unit drained before we saw it run is billed.
        launched = (
            entry.launched_at if entry.state not in (ProviderState.PENDING, ProviderState.UNKNOWN) else None
        )
        self.store.observe(row, busy=entry.busy, launched_at=launched, zone=entry.zone, egress_bytes=entry.egress_bytes)
        signal = busy_signal(row, entry, self.now, self.settings.heartbeat_ttl)
        if entry.state in GONE:
            await self._terminated_by_provider(row, entry, report)
        elif entry.interruption_notice and state != ResourceState.DRAINING:
            await self._interruption(row, report)
        elif state == ResourceState.PROVISIONING:
            await self._booting(row, entry, report)
        elif state == ResourceState.RUNNING:
            await self._idle(row, signal, report)
        elif state == ResourceState.DRAINING and signal is not True:
            await self._release(row, "drained", report)

    # --- one rule each -------------------------------------------------------------------------

    async def _resolve_intent(
        self, row: ResourceRow, entry: BackendResource, report: ReconcileReport
    ) -> None:
        """The provider made the unit but we never recorded it (crash after the call)."""
        await self.store.transition(
            row.id, ResourceState.PROVISIONING, provider_id=entry.provider_id, reason="found on provider"
        )
        report.resolved_intents.append(row.id)
        if entry.state == ProviderState.RUNNING:
            await self.store.transition(row.id, ResourceState.RUNNING, launched_at=entry.launched_at)

    async def _booting(self, row: ResourceRow, entry: BackendResource, report: ReconcileReport) -> None:
        if entry.state == ProviderState.RUNNING:
            await self.store.transition(row.id, ResourceState.RUNNING, launched_at=entry.launched_at)
            self.circuit.record_success(offering_key(row.offering_id))
            report.booted.append(row.id)
            return
        since = row_time(row.state_since) or self.now
        if self.now - since > self.settings.boot_timeout_for(row.market):
            reason = f"boot timeout: still {entry.state} after {self.now - since}"
            await self.store.transition(row.id, ResourceState.FAILED, failure_reason=reason)
            trip = self.circuit.record_failure(
                offering_key(row.offering_id), reason, base_cooloff=self.circuit.settings.unavailable_cooloff
            )
            if trip.opened:
                await self.store.event(
                    "circuit.opened", trip.key, {"until": trip.open_until, "error": reason}
                )
            failed = self.store.get(row.id)
            assert failed is not None
            await self._release(failed, reason, report, provider_id=entry.provider_id)
            report.stuck.append(row.id)
            self._replan(row, report)

    async def _terminated_by_provider(
        self, row: ResourceRow, entry: BackendResource, report: ReconcileReport
    ) -> None:
        state = ResourceState(row.state)
        if state == ResourceState.DRAINING:
            await self.store.transition(
                row.id, ResourceState.RELEASED, reason="terminated after drain", stopped_at=entry.stopped_at
            )
            report.released.append(row.id)
            return
        launched = row_time(row.launched_at)
        if (
            row.walltime_hours is not None
            and launched is not None
            and launched + timedelta(hours=row.walltime_hours) <= self.now + self.settings.walltime_slack
        ):
            await self.store.transition(row.id, ResourceState.RELEASED, reason="walltime reached")
            report.walltime_ended.append(row.id)
            self._replan(row, report)
            return
        if entry.ended_by_itself:
            # not replanned: a pilot ends itself when its group has no work left, and demand that is
            # still there is planned by the next cycle anyway
            await self.store.transition(
                row.id, ResourceState.RELEASED, reason=ENDED_BY_ITSELF, stopped_at=entry.stopped_at
            )
            report.ended_by_itself.append(row.id)
            return
        if row.market == str(Market.BACKFILL) and entry.state == ProviderState.TERMINATED:
            # backfill ended by anyone but us is its owner taking the node back (Slurm preemption, or
            # our own evacuation for owner work): what backfill is for, not a lost unit
            await self.store.transition(row.id, ResourceState.RELEASED, reason=str(DrainReason.OWNER_RECLAIM))
            report.interrupted.append(row.id)
            self._replan(row, report)
            return
        if entry.state == ProviderState.FAILED:
            await self.store.transition(
                row.id,
                ResourceState.FAILED,
                failure_reason="provider reports failed",
                stopped_at=entry.stopped_at,
            )
        else:
            await self.store.transition(
                row.id,
                ResourceState.LOST,
                failure_reason=f"terminated by the provider ({entry.detail or '?'})",
                stopped_at=entry.stopped_at,
            )
            report.lost.append(row.id)
        self._replan(row, report)

    async def _interruption(self, row: ResourceRow, report: ReconcileReport) -> None:
        backfill = row.market == str(Market.BACKFILL)
        reason = str(DrainReason.OWNER_RECLAIM) if backfill else "spot interruption"
        await self.store.transition(row.id, ResourceState.DRAINING, reason=reason)
        report.interrupted.append(row.id)
        self._replan(row, report)
        if backfill:  # the owner wants the node now: cancel what is still there
            drained = self.store.get(row.id)
            assert drained is not None
            await self._release(drained, reason, report)

    async def _idle(self, row: ResourceRow, signal: bool | None, report: ReconcileReport) -> None:
        """Drain a unit its work reports idle for `idle_drain`; no signal at all is never idleness."""
        idle_since = row_time(row.idle_since)
        if signal is not False or idle_since is None:
            return
        if self.now - idle_since >= self.settings.idle_drain:
            await self.store.transition(row.id, ResourceState.DRAINING, reason=str(DrainReason.IDLE))
            report.idle_drained.append(row.id)
            drained = self.store.get(row.id)
            assert drained is not None
            await self._release(drained, str(DrainReason.IDLE), report)

    async def _missing(self, fleet: Fleet, row: ResourceRow, report: ReconcileReport) -> None:
        now = self.now
        first_missing = fleet.missing_since.setdefault(row.id, now)
        created = row_time(row.created_at) or now
        grace = self.settings.lost_grace
        if now - first_missing >= grace and now - created >= grace:
            await self.store.transition(
                row.id,
                ResourceState.LOST,
                failure_reason=f"not listed by {row.backend} for {now - first_missing}",
            )
            fleet.missing_since.pop(row.id, None)
            report.lost.append(row.id)
            self._replan(row, report)

    async def _recheck_lost(
        self, row: ResourceRow, entry: BackendResource | None, report: ReconcileReport
    ) -> None:
        if entry is None:
            return
        if entry.state == ProviderState.RUNNING:
            await self.store.transition(row.id, ResourceState.RUNNING, reason="listed again")
            report.reappeared.append(row.id)
        elif entry.state in GONE:
            await self.store.transition(row.id, ResourceState.RELEASED, reason="provider confirms it is gone")
            report.released.append(row.id)

    async def _release(
        self, row: ResourceRow, reason: str, report: ReconcileReport, *, provider_id: str | None = None
    ) -> None:
        if await self.actuator.release(row, reason, provider_id=provider_id):
            report.released.append(row.id)

    async def _untracked(
        self,
        backend: str,
        entry: BackendResource,
        offerings: Mapping[str, Offering],
        report: ReconcileReport,
    ) -> None:
        if entry.tags and entry.tags.get(TAG_BROKER) not in (None, self.store.broker_id):
            return  # another broker's unit: not ours to touch
        if entry.egress_bytes is not None and entry.resource_id:
            self.store.observe_late_egress(entry.resource_id, entry.egress_bytes)
        if entry.state in GONE:
            return
        known = self.store.get(entry.resource_id) if entry.resource_id else None
        if known is not None and entry.state == ProviderState.STOPPING:
            return  # released by us and on its way out (a cancelled Slurm job completing)
        if known is None and self.settings.orphan_policy == "adopt":
            offering = offerings.get(entry.offering_id or "")
            target = (
                ResourceState.RUNNING if entry.state == ProviderState.RUNNING else ResourceState.PROVISIONING
            )
            row = await self.store.adopt(entry, backend=backend, offering=offering, state=target)
            report.adopted.append(row.id)
            return
        # An orphan under the release policy, or a unit whose row we already closed: terminate it.
        impl = self.actuator.backends.get(backend)
        if impl is None:
            return
        self.actuator.guard()
        try:
            await impl.release(entry.provider_id)
        except BackendError as exc:
            log.warning(
                "orphan.release_failed", backend=backend, provider_id=entry.provider_id, error=str(exc)
            )
            return
        await self.store.event(
            "resource.orphan_released",
            entry.resource_id or entry.provider_id,
            {
                "backend": backend,
                "provider_id": entry.provider_id,
                "row_state": known.state if known else None,
            },
        )
        report.orphans_released.append(entry.provider_id)

    @staticmethod
    def _replan(row: ResourceRow, report: ReconcileReport) -> None:
        if row.group_id:
            report.replan_groups.add(row.group_id)

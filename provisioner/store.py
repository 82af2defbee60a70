"""Repository over the tables: the one place that writes resources, events, plans and decisions.

Every resource state change goes through `Store.transition`: the lifecycle is checked
(`check_transition`), the row updated and an `events` row appended in ONE transaction, and only
after the commit is the event published on the bus.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import Engine, insert, update
from sqlmodel import Session, col, or_, select

from accounting.billing import price_in_force
from accounting.spot_prices import StoredSpotPrices
from backends.base import BackendResource
from provisioner.bus import Bus, event_topic
from provisioner.clock import Clock
from provisioner.db import session as open_session
from provisioner.domain import (
    DemandGroup,
    GroupExplanation,
    Offering,
    Plan,
    ResourceState,
    check_transition,
)
from provisioner.ids import IdSource, RandomIds
from provisioner.ids import plan_id as new_plan_id
from provisioner.ids import resource_id as new_resource_id
from provisioner.model import (
    DecisionRow,
    DemandGroupRow,
    EventRow,
    PlanRow,
    PolicyRow,
    ResourceRow,
    row_time,
    to_micro,
)

log = structlog.get_logger(__name__)

# A unit whose work can report on it: booting (the pilot may start before EC2 says running), running, draining.
HEARTBEAT_STATES = frozenset({ResourceState.PROVISIONING, ResourceState.RUNNING, ResourceState.DRAINING})

# Fixed namespace: the token of a resource id is the same in every process, forever.
TOKEN_NAMESPACE = uuid.UUID("6f2d3c1e-8a4b-5c7d-9e0f-1a2b3c4d5e6f")


def idempotency_token(broker_id: str, resource_id: str) -> str:
    """Deterministic, so a retry after a crash sends the provider the very same token."""
    return str(uuid.uuid5(TOKEN_NAMESPACE, f"{broker_id}/{resource_id}"))


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    at: datetime
    kind: str
    subject: str
    payload: Mapping[str, Any]

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "subject": self.subject,
            "payload": dict(self.payload),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set | tuple | list):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, frozenset | set) else items
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def explanation_json(explanation: GroupExplanation) -> dict[str, Any]:
    return dict(_jsonable(asdict(explanation)))


class Store:
    """Writes go through here; reads are plain queries returning rows."""

    def __init__(
        self, db: Engine, clock: Clock, broker_id: str, bus: Bus | None = None, ids: IdSource | None = None
    ) -> None:
        self.db = db
        self.clock = clock
        self.broker_id = broker_id
        # each group as this store last wrote it, and the observed_at it wrote (save_groups)
        self._saved_groups: dict[str, tuple[DemandGroup, datetime]] = {}
        self.bus = bus
        self.ids: IdSource = ids or RandomIds()
        # Set by the engine while it leads on a shared database (`Leadership.fence`).
        self.fence: Callable[[Session], None] | None = None
        self._egress_seen: dict[str, int] = {}  # last bytes-out counter recorded per resource

    def _fence(self, s: Session) -> None:
        """Writes that act for the leader carry its fencing token: refused (Fenced) once it is deposed."""
        if self.fence is not None:
            self.fence(s)

    def session(self) -> Session:
        return open_session(self.db)

    # --- events -------------------------------------------------------------------------------

    async def _publish(self, events: Iterable[StoredEvent]) -> None:
        if self.bus is None:
            return
        for ev in events:
            try:
                await self.bus.publish(event_topic(ev.kind), ev.message())
            except Exception as exc:  # the event is stored; a bus outage must not stop the engine
                log.warning("bus.publish_failed", kind=ev.kind, subject=ev.subject, error=str(exc))

    def _add_event(self, s: Session, kind: str, subject: str, payload: Mapping[str, Any]) -> EventRow:
        row = EventRow(at=self.clock.now(), kind=kind, subject=subject, payload=_jsonable(dict(payload)))
        s.add(row)
        return row

    @staticmethod
    def _stored(row: EventRow) -> StoredEvent:
        assert row.id is not None
        return StoredEvent(row.id, row_time(row.at) or row.at, row.kind, row.subject, row.payload)

    async def event(self, kind: str, subject: str, payload: Mapping[str, Any] | None = None) -> StoredEvent:
        """Store one event (not a resource transition) and publish it."""
        with self.session() as s:
            row = self._add_event(s, kind, subject, payload or {})
            s.commit()
            stored = self._stored(row)
        await self._publish([stored])
        return stored

    # --- resources ----------------------------------------------------------------------------

    async def record_intent(
        self,
        offering: Offering,
        *,
        group_id: str | None,
        experiment: str | None,
        request_id: str | None = None,
        walltime_hours: float | None = None,
        resource_id: str | None = None,
    ) -> ResourceRow:
        """Write the `requested` row and commit it: this must happen BEFORE any backend call."""
        rid = resource_id or new_resource_id(self.ids)
        now = self.clock.now()
        row = ResourceRow(
            id=rid,
            backend=offering.backend,
            offering_id=offering.id,
            market=str(offering.market),
            group_id=group_id,
            experiment=experiment,
            request_id=request_id,
            state=str(ResourceState.REQUESTED),
            idempotency_token=idempotency_token(self.broker_id, rid),
            price_micro_per_hour=to_micro(offering.price_per_hour),
            cores=offering.cores,
            gpus=offering.gpu_count,
            hs23_per_core=offering.hs23_per_core,
            walltime_hours=walltime_hours,
            zone=offering.zone,
            created_at=now,
            updated_at=now,
            state_since=now,
        )
        with self.session() as s:
            self._fence(s)
            s.add(row)
            ev = self._add_event(
                s,
                "resource.state",
                rid,
                {
                    "from": None,
                    "to": str(ResourceState.REQUESTED),
                    "backend": offering.backend,
                    "offering_id": offering.id,
                    "group_id": group_id,
                    "experiment": experiment,
                },
            )
            s.commit()
            stored = self._stored(ev)
        await self._publish([stored])
        return row

    async def transition(
        self,
        resource_id: str,
        target: ResourceState,
        *,
        reason: str | None = None,
        provider_id: str | None = None,
        launched_at: datetime | None = None,
        failure_reason: str | None = None,
        calls: int = 0,
        stopped_at: datetime | None = None,
    ) -> ResourceRow:
        """Move one resource to `target` (IllegalTransition if the lifecycle forbids it).

        `calls`: backend calls made for it since the last count, stored in the same commit.
        `stopped_at`: the provider terminated it then (its listing says so): the release time, and the
        end of its billing when it is found lost or failed, instead of the moment the broker noticed.
        """
        now = self.clock.now()
        with self.session() as s:
            self._fence(s)
            row = s.exec(select(ResourceRow).where(ResourceRow.id == resource_id).with_for_update()).first()
            if row is None:
                raise KeyError(f"resource {resource_id}: no such row, cannot move it to {target}")
            current = ResourceState(row.state)
            check_transition(resource_id, current, target)
            row.state = str(target)
            row.state_since = now
            row.updated_at = now
            if provider_id is not None:
                row.provider_id = provider_id
            if launched_at is not None and row.launched_at is None:
                row.launched_at = launched_at
            if target == ResourceState.RUNNING and row.launched_at is None:
                row.launched_at = now
            if target == ResourceState.RUNNING and row.idle_since is None and not row.busy:
                row.idle_since = now
            if target == ResourceState.RELEASED:
                row.released_at = min(now, stopped_at) if stopped_at is not None else now
            if failure_reason is not None:
                row.failure_reason = failure_reason
            row.attempts += calls
            s.add(row)
            ev = self._add_event(
                s,
                "resource.state",
                resource_id,
                {
                    "from": str(current),
                    "to": str(target),
                    "reason": reason or failure_reason,
                    "backend": row.backend,
                    "offering_id": row.offering_id,
                    "group_id": row.group_id,
                    "experiment": row.experiment,
                    "provider_id": row.provider_id,
                }
                | ({"stopped_at": stopped_at.isoformat()} if stopped_at is not None else {}),
            )
            s.commit()
            stored = self._stored(ev)
        log.info("resource.state", resource=resource_id, frm=str(current), to=str(target), reason=reason)
        await self._publish([stored])
        return row

    async def adopt(
        self,
        listed: BackendResource,
        *,
        backend: str,
        offering: Offering | None,
        state: ResourceState,
    ) -> ResourceRow:
        """Take over an untracked resource that carries our tag: a row walked requested → `state`."""
        now = self.clock.now()
        rid = listed.resource_id or new_resource_id(self.ids)
        tags = dict(listed.tags)
        row = ResourceRow(
            id=rid,
            backend=backend,
            offering_id=offering.id if offering else (listed.offering_id or "unknown"),
            market=str(offering.market) if offering else "unknown",
            group_id=tags.get("provisioner-group"),
            experiment=tags.get("provisioner-experiment"),
            state=str(ResourceState.REQUESTED),
            idempotency_token=f"adopted:{backend}:{listed.provider_id}",
            provider_id=listed.provider_id,
            price_micro_per_hour=to_micro(offering.price_per_hour) if offering else 0,
            cores=offering.cores if offering else 0,
            gpus=offering.gpu_count if offering else 0,
            hs23_per_core=offering.hs23_per_core if offering else 0.0,
            busy=bool(listed.busy),
            created_at=now,
            updated_at=now,
            state_since=now,
            launched_at=listed.launched_at,
            zone=listed.zone,
        )
        check_transition(rid, ResourceState.REQUESTED, state)
        row.state = str(state)
        with self.session() as s:
            self._fence(s)
            s.add(row)
            ev = self._add_event(
                s,
                "resource.adopted",
                rid,
                {"to": str(state), "backend": backend, "provider_id": listed.provider_id},
            )
            s.commit()
            stored = self._stored(ev)
        await self._publish([stored])
        return row

    def observe(
        self,
        row: ResourceRow,
        *,
        busy: bool | None,
        launched_at: datetime | None = None,
        zone: str | None = None,
        egress_bytes: int | None = None,
    ) -> None:
        """Record what a listing says about work on the unit: a `resource.busy` event on each change,
        and its launch time the first time a listing gives one, whatever the unit's state (a unit
        drained while the broker still saw it provisioning has run, and is billed from its launch).

        Not a lifecycle transition; the event is stored (the billing model splits busy from idle
        time with it) but not published. `row` is the caller's copy; it is updated too, and the
        database only written on a change.
        """
        if egress_bytes is not None:
            self._observe_egress(row.id, egress_bytes)
        launch = launched_at if launched_at is not None and row.launched_at is None else None
        placed = zone if zone and row.zone != zone else None  # the zone the provider chose
        changed = busy is not None and row.busy != busy
        if not changed and launch is None and placed is None:
            return
        now = self.clock.now()
        if changed:
            row.busy = bool(busy)
            row.idle_since = None if busy else now
        if launch is not None:
            row.launched_at = launch
        if placed is not None:
            row.zone = placed
        with self.session() as s:
            stored = s.get(ResourceRow, row.id)
            if stored is None:
                return
            if changed:
                stored.busy = row.busy
                stored.idle_since = row.idle_since
                self._add_event(s, "resource.busy", row.id, {"busy": row.busy})
            if launch is not None and stored.launched_at is None:
                stored.launched_at = launch
            if placed is not None:
                stored.zone = placed
            stored.updated_at = now
            s.add(stored)
            s.commit()

    def observe_late_egress(self, resource_id: str, counter: int) -> None:
        """A released unit's bytes-out counter, still listed by the provider: a cloud's metrics (EC2's
        NetworkOut in CloudWatch) bring the last minutes of traffic after the unit stopped."""
        if self._egress_seen.get(resource_id) == counter:
            return  # nothing moved: no database read
        if self.get(resource_id) is None:
            return  # not one of ours
        self._observe_egress(resource_id, counter)

    def _observe_egress(self, resource_id: str, counter: int) -> None:
        """A `resource.egress` event each time the provider's bytes-out counter of a unit moves: the
        measured egress that the ledger prices and the planner's caps and tiers count."""
        seen = self._egress_seen.get(resource_id)
        if seen is None:
            with self.session() as s:
                last = s.exec(
                    select(EventRow)
                    .where(EventRow.kind == "resource.egress", EventRow.subject == resource_id)
                    .order_by(col(EventRow.id).desc())
                ).first()
            seen = int(last.payload.get("bytes", 0)) if last is not None else 0
        if counter != seen:
            with self.session() as s:
                self._add_event(s, "resource.egress", resource_id, {"bytes": counter, "previous": seen})
                s.commit()
        self._egress_seen[resource_id] = counter

    def find_unit(
        self, *, resource_id: str | None = None, instance_id: str | None = None
    ) -> ResourceRow | None:
        """A unit by our resource id, or by the provider's own id (an EC2 instance id, a GCE name...),
        as a worker on the unit knows it from the instance metadata."""
        if resource_id:
            return self.get(resource_id)
        if not instance_id:
            return None
        with self.session() as s:
            query = select(ResourceRow).where(
                or_(
                    col(ResourceRow.provider_id) == instance_id,
                    col(ResourceRow.provider_id).endswith(f"/{instance_id}"),
                )
            )
            rows = list(s.exec(query.order_by(col(ResourceRow.created_at).desc())).all())
        live = [r for r in rows if ResourceState(r.state) in HEARTBEAT_STATES]
        found = live or rows
        return found[0] if found else None

    def heartbeat(
        self, resource_id: str, *, busy: bool, running_jobs: int | None = None
    ) -> ResourceRow | None:
        """The work on a unit says it is busy or idle (a pilot or worker heartbeat); None: not a live unit.

        Stamped with the broker's clock, not the worker's. The busy/idle history (`resource.busy`
        events) changes only when the answer does; a first "idle" starts the idle time now, not at launch.
        """
        now = self.clock.now()
        with self.session() as s:
            row = s.exec(select(ResourceRow).where(ResourceRow.id == resource_id).with_for_update()).first()
            if row is None or ResourceState(row.state) not in HEARTBEAT_STATES:
                return None
            first = row.heartbeat_at is None
            if busy:
                row.idle_since = None
            elif row.busy or first or row.idle_since is None:
                row.idle_since = now
            if busy != row.busy or first:
                self._add_event(
                    s,
                    "resource.busy",
                    row.id,
                    {"busy": busy, "source": "heartbeat", "running_jobs": running_jobs},
                )
            row.busy = busy
            row.heartbeat_at = now
            row.updated_at = now
            s.add(row)
            s.commit()
            return row

    def note_attempts(self, resource_id: str, calls: int, error: str | None = None) -> int:
        """Count backend calls made for this intent; the count bounds retries across cycles and restarts."""
        with self.session() as s:
            self._fence(s)
            row = s.get(ResourceRow, resource_id)
            if row is None:
                raise KeyError(f"resource {resource_id}: no such row")
            row.attempts += calls
            if error is not None:
                row.failure_reason = error
            row.updated_at = self.clock.now()
            s.add(row)
            s.commit()
            return row.attempts

    def get(self, resource_id: str) -> ResourceRow | None:
        with self.session() as s:
            return s.get(ResourceRow, resource_id)

    def resources(
        self, *, backend: str | None = None, states: Iterable[ResourceState] | None = None
    ) -> list[ResourceRow]:
        query = select(ResourceRow)
        if backend is not None:
            query = query.where(ResourceRow.backend == backend)
        if states is not None:
            query = query.where(col(ResourceRow.state).in_([str(st) for st in states]))
        with self.session() as s:
            return list(s.exec(query.order_by(col(ResourceRow.created_at), col(ResourceRow.id))).all())

    def prices_in_force(self, rows: Iterable[ResourceRow], now: datetime) -> dict[str, int]:
        """Resource id → micro-USD per hour charged now, as the billing model prices it (the stored
        spot price history in the zone used): the planner's spend rate and the metrics read this."""
        with self.session() as s:
            history = StoredSpotPrices(s)
            return {r.id: price_in_force(r, now, history) for r in rows}

    def events(self, *, kind: str | None = None, subject: str | None = None) -> list[EventRow]:
        query = select(EventRow)
        if kind is not None:
            query = query.where(EventRow.kind == kind)
        if subject is not None:
            query = query.where(EventRow.subject == subject)
        with self.session() as s:
            return list(s.exec(query.order_by(col(EventRow.id))).all())

    # --- demand, plans and decisions ----------------------------------------------------------

    def save_groups(self, groups: Sequence[DemandGroup]) -> None:
        """Insert or update each group's row in bulk, not through the ORM's unit of work: every cycle
        writes every group, and a cycle woken by new demand must reach its first provisioning call in
        well under a second. A group unchanged since this store last wrote it only gets its
        `observed_at` moved, without serialising its spec again, and only where the row still holds
        what this store wrote (another replica may have led in between: then it is written in full)."""
        now = self.clock.now()
        latest = {g.id: g for g in groups}  # a group listed twice: the last one wins
        if not latest:
            return
        seen_again: dict[datetime, list[str]] = {}  # by the observed_at this store last wrote
        changed: dict[str, DemandGroup] = {}
        for gid, g in latest.items():
            saved = self._saved_groups.get(gid)
            if saved is not None and saved[0] == g:
                seen_again.setdefault(saved[1], []).append(gid)
            else:
                changed[gid] = g
        with self.session() as s:
            for prev, gids in seen_again.items():
                for start in range(0, len(gids), 500):
                    chunk = gids[start : start + 500]
                    moved = s.execute(
                        update(DemandGroupRow)
                        .where(col(DemandGroupRow.id).in_(chunk), col(DemandGroupRow.observed_at) == prev)
                        .values(observed_at=now)
                        .execution_options(synchronize_session=False)
                    )
                    if moved.rowcount != len(chunk):  # type: ignore[attr-defined]
                        changed.update((gid, latest[gid]) for gid in chunk)  # written since: in full
            rows = [
                {
                    "id": g.id,
                    "experiment": g.experiment,
                    "source": g.source,
                    "jobs": g.jobs,
                    "spec": _jsonable(asdict(g)),
                    "request_id": g.request_id,
                    "observed_at": now,
                }
                for g in changed.values()
            ]
            ids = [r["id"] for r in rows]
            existing: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                existing.update(s.exec(select(DemandGroupRow.id).where(col(DemandGroupRow.id).in_(chunk))))
            fresh = [r for r in rows if r["id"] not in existing]
            known = [r for r in rows if r["id"] in existing]
            if fresh:
                s.execute(insert(DemandGroupRow), fresh)
            if known:
                s.execute(update(DemandGroupRow), known)  # ORM bulk UPDATE by primary key
            s.commit()
        self._saved_groups.update((gid, (g, now)) for gid, g in latest.items())

    async def save_plan(
        self, plan: Plan, *, policy_sha256: str | None = None, summary: Mapping[str, Any] | None = None
    ) -> str:
        """Store the plan and one decision per demand group with its explanation; returns the plan id."""
        plan_id = new_plan_id(self.ids)
        now = plan.created_at or self.clock.now()
        with self.session() as s:
            self._fence(s)
            # The policy in force is the newest version stored (provisioner.policy_versions).
            in_force = s.exec(select(PolicyRow).order_by(col(PolicyRow.id).desc()).limit(1)).first()
            s.add(
                PlanRow(
                    id=plan_id,
                    created_at=now,
                    solver=plan.solver,
                    policy_sha256=policy_sha256 or (in_force.sha256 if in_force else None),
                    policy_version=in_force.id if in_force else None,
                    total_cost_micro=to_micro(plan.total_cost),
                    spend_rate_micro_per_hour=to_micro(plan.spend_rate_per_hour),
                    summary=_jsonable(
                        {
                            "items": len(plan.items),
                            "units": sum(i.units for i in plan.items),
                            "drains": len(plan.drains),
                            "objective": plan.objective,
                            **dict(summary or {}),
                        }
                    ),
                )
            )
            s.flush()  # the plan row must exist before decisions reference it (PostgreSQL FK)
            decisions = []
            for ex in plan.explanations:
                first = ex.chosen[0] if ex.chosen else None
                decisions.append(
                    {
                        "plan_id": plan_id,
                        "group_id": ex.group_id,
                        "experiment": ex.experiment,
                        "offering_id": first.offering_id if first else None,
                        "units": sum(i.units for i in ex.chosen),
                        "jobs": sum(i.jobs for i in ex.chosen),
                        "cost_micro": sum(to_micro(i.cost) for i in ex.chosen),
                        "cost_per_hs23_hour": str(first.cost_per_hs23_hour.total) if first else None,
                        "unserved_jobs": ex.unserved_jobs,
                        "explanation": explanation_json(ex),
                    }
                )
            if decisions:  # one bulk INSERT: a decision per group per cycle adds up
                s.execute(insert(DecisionRow), decisions)
            ev = self._add_event(
                s,
                "plan.created",
                plan_id,
                {"solver": plan.solver, "items": len(plan.items), "total_cost": plan.total_cost},
            )
            s.commit()
            stored = self._stored(ev)
        await self._publish([stored])
        return plan_id

"""The in-memory picture of the fleet: live resource rows joined with each backend's last listing.

Every part of the engine reads this one picture (Karpenter's cluster state) instead of asking
the backends again; the planner gets it as `FleetUnit`s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from backends.base import BackendResource
from provisioner.domain import LIVE_STATES, FleetUnit, ResourceState
from provisioner.model import ResourceRow, from_micro, row_time


@dataclass
class Listing:
    backend: str
    at: datetime
    resources: list[BackendResource]

    def by_resource_id(self) -> dict[str, BackendResource]:
        return {r.resource_id: r for r in self.resources if r.resource_id}

    def by_provider_id(self) -> dict[str, BackendResource]:
        return {r.provider_id: r for r in self.resources}


HEARTBEAT_TTL = timedelta(minutes=5)  # a heartbeat older than this is no signal


def heartbeat_fresh(row: ResourceRow, now: datetime, ttl: timedelta = HEARTBEAT_TTL) -> bool:
    at = row_time(row.heartbeat_at)
    return at is not None and now - at <= ttl


def busy_signal(
    row: ResourceRow, listed: BackendResource | None, now: datetime, ttl: timedelta = HEARTBEAT_TTL
) -> bool | None:
    """Whether work runs on the unit, from the work itself; None: nothing tells (never idle on a guess).

    The backend's view comes first (the batch system's view of a pilot or node, provider metrics),
    then a fresh heartbeat from the pilot/worker on the unit.
    """
    if listed is not None and listed.busy is not None:
        return listed.busy
    if heartbeat_fresh(row, now, ttl):
        return row.busy
    return None


@dataclass
class Fleet:
    """Rows are re-read from the table each cycle; listings and `missing_since` live across cycles."""

    rows: list[ResourceRow] = field(default_factory=list)
    listings: dict[str, Listing] = field(default_factory=dict)
    missing_since: dict[str, datetime] = field(default_factory=dict)
    heartbeat_ttl: timedelta = HEARTBEAT_TTL

    def refresh(self, rows: Sequence[ResourceRow]) -> None:
        self.rows = [r for r in rows if ResourceState(r.state) in LIVE_STATES]

    def set_listing(self, listing: Listing) -> None:
        self.listings[listing.backend] = listing

    def listed(self, row: ResourceRow) -> BackendResource | None:
        """This resource as its backend's last listing shows it, if it does."""
        listing = self.listings.get(row.backend)
        if listing is None:
            return None
        for r in listing.resources:
            if (row.provider_id and r.provider_id == row.provider_id) or r.resource_id == row.id:
                return r
        return None

    def units(self, now: datetime, prices: Mapping[str, int] | None = None) -> list[FleetUnit]:
        """`prices`: resource id → micro-USD per hour in force now (`Store.prices_in_force`); a unit
        missing from it keeps the price recorded at creation."""
        by_pid: dict[tuple[str, str], BackendResource] = {}
        by_rid: dict[tuple[str, str], BackendResource] = {}
        for name, listing in self.listings.items():
            for r in listing.resources:
                by_pid[(name, r.provider_id)] = r
                if r.resource_id:
                    by_rid[(name, r.resource_id)] = r
        out = []
        for row in self.rows:
            listed = (by_pid.get((row.backend, row.provider_id)) if row.provider_id else None) or by_rid.get(
                (row.backend, row.id)
            )
            signal = busy_signal(row, listed, now, self.heartbeat_ttl)
            out.append(unit_of(row, now, busy_known=signal is not None, price_micro_per_hour=(prices or {}).get(row.id)))
        return out

    def count_by_group(self) -> Mapping[str | None, int]:
        counts: dict[str | None, int] = {}
        for r in self.rows:
            if ResourceState(r.state) != ResourceState.DRAINING:
                counts[r.group_id] = counts.get(r.group_id, 0) + 1
        return counts


def unit_of(
    row: ResourceRow, now: datetime, *, busy_known: bool = True, price_micro_per_hour: int | None = None
) -> FleetUnit:
    """`busy_known=False`: nothing reports on the work of this unit, so it is never taken for idle.
    `price_micro_per_hour`: the price in force now (billing's, `Store.prices_in_force`); None keeps
    the price recorded at creation."""
    launched = row_time(row.launched_at)
    # A unit that never got work has been idle since it came up.
    idle_since = row_time(row.idle_since) or launched
    idle_hours = (
        0.0
        if row.busy or idle_since is None or not busy_known
        else max(0.0, (now - idle_since).total_seconds() / 3600)
    )
    walltime_left = None
    if row.walltime_hours is not None and launched is not None:
        walltime_left = max(0.0, row.walltime_hours - (now - launched).total_seconds() / 3600)
    return FleetUnit(
        resource_id=row.id,
        offering_id=row.offering_id,
        group_id=row.group_id,
        experiment=row.experiment,
        state=ResourceState(row.state),
        busy=row.busy,
        busy_known=busy_known,
        idle_hours=idle_hours,
        walltime_left_hours=walltime_left,
        price_per_hour=from_micro(
            row.price_micro_per_hour if price_micro_per_hour is None else price_micro_per_hour
        ),
    )

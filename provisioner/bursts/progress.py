"""How far a burst request has got: money spent (and committed) and HS23-hours delivered, from the
billing model's view of the units that served it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlmodel import Session, col, select

from accounting.billing import PriceHistory, priced_facts, slices, usage
from accounting.spot_prices import StoredSpotPrices
from provisioner.domain import LIVE_STATES, ResourceState
from provisioner.model import MICRO, EventRow, ResourceRow, row_time
from provisioner.requests import cost_of_units, request_resources
from provisioner.spend import committed_micro

# What a live cloud unit still costs before the engine notices the end and drains it (a cycle and a
# release); a unit with a walltime (a pilot) is committed to its walltime instead.
COMMIT_HOURS = 0.25
_STATE_EVENTS = ("resource.state", "resource.busy", "resource.idle")


@dataclass(frozen=True, slots=True)
class RequestProgress:
    first_launch: datetime | None  # when its first unit started running
    cost_so_far: Decimal  # money spent until now
    cost_committed: Decimal  # spent plus what its live units still cost before they can stop
    hs23_hours_delivered: float  # busy time × cores × HS23 per core
    hs23_hours_held: float  # billable time × cores × HS23 per core
    live_units: int
    units: int
    busy_signal: bool = False  # some unit ever reported whether it held work

    @property
    def hs23_hours_done(self) -> float:
        """Work to count against an HS23-hours request: delivered (busy) when its units report busy;
        with no signal at all the broker cannot see delivery, so capacity held counts instead."""
        return self.hs23_hours_delivered if self.busy_signal else self.hs23_hours_held


NOTHING = RequestProgress(None, Decimal(0), Decimal(0), 0.0, 0.0, 0, 0)


def progress_of(
    resources: Sequence[ResourceRow],
    events: Sequence[EventRow],
    *,
    since: datetime,
    now: datetime,
    prices: PriceHistory | None,
) -> RequestProgress:
    """Progress from the request's resources and their events (state and busy changes), at the price
    in force (`prices`: the spot price history; the same units and prices as `request show`)."""
    if not resources:
        return NOTHING
    by_unit: dict[str, list[tuple[str, datetime, dict[str, object]]]] = {}
    for e in events:
        by_unit.setdefault(e.subject, []).append((e.kind, e.at, e.payload))
    units = [priced_facts(r, by_unit.get(r.id, []), as_of=now, prices=prices) for r in resources]
    totals = usage(piece for u in units for piece in slices(u, since, now + timedelta(seconds=1), as_of=now))
    spent = cost_of_units(units, now)
    ahead = sum(
        committed_micro(u, now=now, until=now + timedelta(days=3660), commit_hours=COMMIT_HOURS)
        for u in units
    )
    committed = spent + Decimal(ahead) / MICRO
    launches = [t for r in resources if (t := row_time(r.launched_at)) is not None]
    return RequestProgress(
        first_launch=min(launches) if launches else None,
        cost_so_far=spent,
        cost_committed=committed,
        hs23_hours_delivered=totals.hs23_hours_delivered,
        hs23_hours_held=totals.hs23_hours_held,
        live_units=sum(1 for r in resources if ResourceState(r.state) in LIVE_STATES),
        units=len(resources),
        busy_signal=any(u.busy_changes or u.busy_now for u in units),
    )


def load_progress(session: Session, request_id: str, *, since: datetime, now: datetime) -> RequestProgress:
    resources = request_resources(session, [request_id])[request_id]
    if not resources:
        return NOTHING
    events = list(
        session.exec(
            select(EventRow)
            .where(
                col(EventRow.kind).in_(_STATE_EVENTS), col(EventRow.subject).in_([r.id for r in resources])
            )
            .order_by(col(EventRow.at), col(EventRow.id))
        )
    )
    return progress_of(resources, events, since=since, now=now, prices=StoredSpotPrices(session))

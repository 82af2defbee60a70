"""The billing model: each unit's billable time, cut into slices, from which every figure of money and work derives.

A unit is billable from the moment the provider starts charging (its launch; a unit that never
launched is billed nothing) to the moment it stops (release, or the moment it was found failed or
lost, or its walltime; `as_of` for a live unit). That span is cut into **slices** at busy/idle
changes, price changes (the spot price in force) and month boundaries. Definitions, one each:

- money spent: the sum of slice amounts. Amounts are rounded cumulatively from the start of the
  span, so any cut of a unit (months, hours, days) sums exactly to round(∫ price dt);
- HS23-hours **held**: billable seconds × cores × HS23 per core (capacity paid for);
- HS23-hours **delivered**: the same over busy slices only (a job was running);
- idle money: the amount of slices with no job running, including the time before the first job;
- node-hours: billable seconds of allocation pilots (one unit = one node).

Public API (keep it small): `UnitFacts`, `Slice`, `Usage`, `unit_facts`, `load_units`, `slices`,
`usage`, `usage_by`, `spent_micro`, `events_for`, `priced_facts`,
`price_in_force`. Readers of the database go through `load_units`; everything
else is pure.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Table, and_, or_, select
from sqlmodel import Session

from accounting.period import Month
from provisioner.model import EventRow, ResourceRow, row_time

__all__ = [
    "BUSY_EVENT_KINDS",
    "Event",
    "PriceHistory",
    "Slice",
    "UnitFacts",
    "Usage",
    "events_for",
    "load_units",
    "price_in_force",
    "priced_facts",
    "slices",
    "spent_micro",
    "unit_facts",
    "usage",
    "usage_by",
]

RESOURCES: Table = ResourceRow.__table__  # type: ignore[attr-defined]
EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
# Events that carry busy/idle history (payload {"busy": bool}).
BUSY_EVENT_KINDS = ("resource.busy", "resource.idle")
STATE_EVENT = "resource.state"
_STOPPED = frozenset({"failed", "lost"})
_US_PER_HOUR = 3_600_000_000
QUERY_BATCH = 500
Event = tuple[str, datetime, Mapping[str, Any]]  # (kind, at, payload) of a resource's event


def _round_half_even(numerator: int, denominator: int) -> int:
    q, r = divmod(numerator, denominator)
    twice = 2 * r
    if twice > denominator or (twice == denominator and q % 2 == 1):
        q += 1
    return q


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class UnitFacts:
    """What the broker knows of one unit, as billing needs it.

    `charged_from` None: the provider never charged for it (a create that failed or was lost before
    launch): it is billed $0. `charged_until` None: still charging (cut at `as_of`).
    `busy_changes`: (when, busy) each time a listing saw the unit start or stop holding work; before
    the first change it was in the opposite state, with none it was `busy_now` throughout.
    `price_changes`: (from when, micro-USD per hour) — the price in force from that moment on (spot
    price history, in the zone used); before the first change, `price_micro_per_hour` applies.
    """

    resource_id: str
    experiment: str | None
    backend: str
    offering_id: str
    market: str
    cores: int
    gpus: int
    hs23_per_core: float
    price_micro_per_hour: int
    charged_from: datetime | None
    charged_until: datetime | None
    busy_changes: tuple[tuple[datetime, bool], ...] = ()
    busy_now: bool = False
    price_changes: tuple[tuple[datetime, int], ...] = ()
    request_id: str | None = None
    walltime_hours: float | None = None
    state: str = ""
    launch_estimated: bool = False  # charged_from taken from the first busy report, not a launch time

    def span(self, as_of: datetime) -> tuple[datetime, datetime] | None:
        """[start, end) of billable time known at `as_of`, or None if nothing is billable."""
        if self.charged_from is None or self.charged_from >= as_of:
            return None
        end = self.charged_until if self.charged_until is not None else as_of
        end = min(end, as_of)
        if self.walltime_hours is not None:  # Slurm (or the provider) ends it at its walltime
            end = min(end, self.charged_from + timedelta(hours=self.walltime_hours))
        return (self.charged_from, end) if end > self.charged_from else None

    def price_at(self, when: datetime) -> int:
        price = self.price_micro_per_hour
        for at, value in self.price_changes:
            if at > when:
                break
            price = value
        return price

    def cost_exact(self, when: datetime) -> int:
        """∫ price dt from `charged_from` to `when`, in micro-USD × microseconds per hour (exact)."""
        assert self.charged_from is not None
        if when <= self.charged_from:
            return 0
        points = [
            self.charged_from,
            *(at for at, _ in self.price_changes if self.charged_from < at < when),
            when,
        ]
        return sum(self.price_at(a) * _us(b - a) for a, b in itertools.pairwise(points))

    def cost_micro(self, when: datetime) -> int:
        """Money charged from the start of the span to `when`, rounded: the cumulative basis of slices."""
        return _round_half_even(self.cost_exact(when), _US_PER_HOUR)


@dataclass(frozen=True, slots=True)
class Slice:
    """A piece of one unit's billable time with one busy state, one price, inside one month."""

    unit: UnitFacts
    start: datetime
    end: datetime
    busy: bool
    price_micro_per_hour: int
    amount_micro: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def month(self) -> Month:
        return Month.of(self.start)

    @property
    def hs23_hours_held(self) -> float:
        return self.seconds / 3600 * self.unit.cores * self.unit.hs23_per_core

    @property
    def hs23_hours_delivered(self) -> float:
        return self.hs23_hours_held if self.busy else 0.0

    @property
    def node_hours(self) -> float:
        return self.seconds / 3600


def _busy_state_at_start(unit: UnitFacts) -> bool:
    return (not unit.busy_changes[0][1]) if unit.busy_changes else unit.busy_now


def slices(unit: UnitFacts, lo: datetime, hi: datetime, *, as_of: datetime) -> list[Slice]:
    """The unit's billable slices inside [lo, hi) as known at `as_of`, in time order.

    Cut at every busy/idle change, price change and month boundary; together the slices of
    [lo, hi) cover exactly the billable part of it, each second once.
    """
    span = unit.span(as_of)
    if span is None:
        return []
    a, b = max(span[0], lo), min(span[1], hi)
    if b <= a:
        return []
    cuts = {a, b}
    cuts.update(at for at, _ in unit.busy_changes if a < at < b)
    cuts.update(at for at, _ in unit.price_changes if a < at < b)
    month = Month.of(a).next()
    while month.start < b:
        cuts.add(month.start)
        month = month.next()
    points = sorted(cuts)
    changes = sorted(unit.busy_changes, key=lambda c: c[0])
    state = _busy_state_at_start(unit)
    i = 0
    out: list[Slice] = []
    before = unit.cost_micro(points[0])
    for s, e in itertools.pairwise(points):
        while i < len(changes) and changes[i][0] <= s:
            state = changes[i][1]
            i += 1
        after = unit.cost_micro(e)
        out.append(Slice(unit, s, e, state, unit.price_at(s), after - before))
        before = after
    return out


@dataclass(slots=True)
class Usage:
    """Totals over slices: the figures every report names."""

    amount_micro: int = 0  # money spent
    idle_micro: int = 0  # of which with no job running
    billable_seconds: float = 0.0
    busy_seconds: float = 0.0
    hs23_hours_held: float = 0.0
    hs23_hours_delivered: float = 0.0
    gpu_hours: float = 0.0
    units: set[str] = field(default_factory=set)

    def add(self, piece: Slice) -> None:
        self.amount_micro += piece.amount_micro
        self.billable_seconds += piece.seconds
        self.hs23_hours_held += piece.hs23_hours_held
        self.gpu_hours += piece.seconds / 3600 * piece.unit.gpus
        if piece.busy:
            self.busy_seconds += piece.seconds
            self.hs23_hours_delivered += piece.hs23_hours_held
        else:
            self.idle_micro += piece.amount_micro
        self.units.add(piece.unit.resource_id)

    @property
    def busy_micro(self) -> int:
        return self.amount_micro - self.idle_micro

    @property
    def node_hours(self) -> float:
        return self.billable_seconds / 3600


def usage(pieces: Iterable[Slice]) -> Usage:
    total = Usage()
    for piece in pieces:
        total.add(piece)
    return total


K = TypeVar("K", bound=Hashable)


def usage_by(pieces: Iterable[Slice], key: Callable[[Slice], K]) -> dict[K, Usage]:
    """Totals per key, e.g. `lambda s: (s.month, s.unit.experiment)`."""
    out: dict[K, Usage] = defaultdict(Usage)
    for piece in pieces:
        out[key(piece)].add(piece)
    return dict(out)


def spent_micro(units: Iterable[UnitFacts], lo: datetime, hi: datetime, *, as_of: datetime) -> int:
    """Money spent in [lo, hi) by these units, as known at `as_of`."""
    return sum(piece.amount_micro for u in units for piece in slices(u, lo, hi, as_of=as_of))


# ---- from the broker's tables --------------------------------------------------------------------


class PriceHistory(Protocol):
    """The price in force over time for a unit (spot price history in the zone used)."""

    def changes(self, row: ResourceRow, start: datetime, end: datetime) -> Sequence[tuple[datetime, int]]: ...


def _when(value: datetime) -> datetime:
    out = row_time(value)
    assert out is not None
    return out.astimezone(UTC)


def unit_facts(
    row: ResourceRow,
    events: Sequence[Event] = (),
    *,
    price_changes: Sequence[tuple[datetime, int]] = (),
) -> UnitFacts:
    """The billing facts of one resource row and its events (kind, at, payload).

    Charged from: the launch time; a unit the broker never saw launch (drained while still
    provisioning) but that a listing saw holding work is charged from that first sighting (a lower
    bound of what the provider charges). Charged until: the release, or the moment it was found
    failed or lost (and never seen running again), whichever is first.
    """
    busy_changes: list[tuple[datetime, bool]] = []
    stopped_at: datetime | None = None
    for kind, at, payload in sorted(events, key=lambda e: _when(e[1])):
        when = _when(at)
        if kind in BUSY_EVENT_KINDS:
            busy_changes.append((when, bool(payload.get("busy", kind == "resource.busy"))))
        elif kind == STATE_EVENT:
            target = payload.get("to")
            if target in _STOPPED and stopped_at is None:
                said = payload.get("stopped_at")  # the provider's own stop time, when its listing gave one
                stopped_at = min(when, _when(datetime.fromisoformat(said))) if isinstance(said, str) else when
            elif target == "running":
                stopped_at = None
    idle_since = row_time(row.idle_since)
    if not busy_changes and not row.busy and idle_since is not None:
        busy_changes.append((idle_since.astimezone(UTC), False))  # no history: held work until then
    launched = row_time(row.launched_at)
    estimated = False
    if launched is None:
        first_busy = next((at for at, busy in busy_changes if busy), None)
        launched, estimated = first_busy, first_busy is not None
    until = row_time(row.released_at)
    if row.state in _STOPPED:
        since = row_time(row.state_since)
        stopped_at = stopped_at or since
    if stopped_at is not None:
        until = stopped_at if until is None else min(until, stopped_at)
    return UnitFacts(
        resource_id=row.id,
        experiment=row.experiment,
        backend=row.backend,
        offering_id=row.offering_id,
        market=row.market,
        cores=row.cores,
        gpus=row.gpus,
        hs23_per_core=row.hs23_per_core,
        price_micro_per_hour=int(row.price_micro_per_hour),
        charged_from=launched.astimezone(UTC) if launched else None,
        charged_until=until.astimezone(UTC) if until else None,
        busy_changes=tuple(busy_changes),
        busy_now=row.busy,
        price_changes=tuple(sorted(price_changes)),
        request_id=row.request_id,
        walltime_hours=row.walltime_hours,
        state=row.state,
        launch_estimated=estimated,
    )


def events_for(session: Session, ids: Sequence[str]) -> dict[str, list[Event]]:
    """The busy/idle and state events of these resources, by resource id, for `unit_facts`."""
    out: dict[str, list[Event]] = defaultdict(list)
    kinds = (*BUSY_EVENT_KINDS, STATE_EVENT)
    for i in range(0, len(ids), QUERY_BATCH):
        stmt = (
            select(EVENTS.c.subject, EVENTS.c.kind, EVENTS.c.at, EVENTS.c.payload)
            .where(EVENTS.c.kind.in_(kinds), EVENTS.c.subject.in_(ids[i : i + QUERY_BATCH]))
            .order_by(EVENTS.c.at, EVENTS.c.id)
        )
        for subject, kind, at, payload in session.execute(stmt):
            out[str(subject)].append((str(kind), at, payload if isinstance(payload, dict) else {}))
    return out


def load_units(
    session: Session,
    lo: datetime,
    hi: datetime,
    *,
    as_of: datetime,
    experiment: str | None = None,
    request_id: str | None = None,
    resource_ids: Sequence[str] | None = None,
    prices: PriceHistory | None = None,
    include_unbilled: bool = False,
) -> list[UnitFacts]:
    """Billing facts of every unit that may have been charged during [lo, hi) (as known at `as_of`).

    Units billed $0 so far (never launched, never seen busy) are left out unless `include_unbilled`
    (budgets count what a live, not yet launched unit commits). Ordered by resource id.
    """
    r = RESOURCES.c
    begun = min(hi, as_of)
    cond: list[Any] = [
        or_(r.launched_at < begun, and_(r.launched_at.is_(None), r.created_at < begun)),
        or_(r.released_at.is_(None), r.released_at > lo),
    ]
    if experiment is not None:
        cond.append(r.experiment == experiment)
    if request_id is not None:
        cond.append(r.request_id == request_id)
    if resource_ids is not None:
        cond.append(r.id.in_(list(resource_ids)))
    rows = list(session.execute(select(ResourceRow).where(and_(*cond)).order_by(r.id)).scalars())
    events = events_for(session, [row.id for row in rows])
    out = []
    for row in rows:
        facts = priced_facts(row, events.get(row.id, []), as_of=as_of, prices=prices)
        if facts.charged_from is None and not include_unbilled:
            continue
        out.append(facts)
    return out


def priced_facts(
    row: ResourceRow, events: Sequence[Event], *, as_of: datetime, prices: PriceHistory | None
) -> UnitFacts:
    """`unit_facts` with the price in force over the unit's billable span (`prices`: the spot price
    history; None keeps the price recorded at creation). Every reader of money builds units here."""
    facts = unit_facts(row, events)
    if prices is None or facts.charged_from is None:
        return facts
    changes = prices.changes(row, facts.charged_from, facts.charged_until or as_of)
    return unit_facts(row, events, price_changes=changes) if changes else facts


def price_in_force(row: ResourceRow, when: datetime, prices: PriceHistory | None) -> int:
    """Micro-USD per hour this unit is charged at `when`: the price in force then (spot price history
    in the zone used), as its billed slices use it; the price recorded at creation without history."""
    changes = prices.changes(row, when, when) if prices is not None else ()
    return int(changes[-1][1]) if changes else int(row.price_micro_per_hour)

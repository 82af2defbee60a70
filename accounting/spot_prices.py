"""Spot price history: stored per backend, zone and instance type, read by billing as the price in force.

A spot unit is billed at the price in force over each interval of its run, in the zone it actually
ran in (the resource's `zone`, from the provider's listing), not the price frozen when it was
created (for a region-wide offering: the dearest zone's). `collect_spot_prices` asks a backend for
the history of what the fleet ran; `StoredSpotPrices` hands billing (`load_units(prices=...)`,
`build_ledger(prices=...)`) the changes. A unit without a zone, or a type without history, keeps
the price recorded at creation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from backends.base import SpotPrice
from provisioner.domain import Market
from provisioner.model import ResourceRow, SpotPriceRow, row_time, to_micro

__all__ = ["StoredSpotPrices", "collect_spot_prices", "store_spot_prices"]

SPOT_PRICES: Table = SpotPriceRow.__table__  # type: ignore[attr-defined]
RESOURCES: Table = ResourceRow.__table__  # type: ignore[attr-defined]
BATCH = 500

# (region, instance types, start, end) → the history in that window
HistoryFetch = Callable[[str, Sequence[str], datetime, datetime], Awaitable[list[SpotPrice]]]


def _instance_type(offering_id: str) -> str | None:
    parts = offering_id.split(":")
    return parts[2] if len(parts) >= 4 else None


def _region(offering_id: str) -> str | None:
    parts = offering_id.split(":")
    return parts[1] if len(parts) >= 4 else None


def store_spot_prices(session: Session, backend: str, points: Iterable[SpotPrice]) -> int:
    """Upsert price points (idempotent: a point is keyed by backend, zone, type and time)."""
    values = [
        {"backend": backend, "zone": p.zone, "instance_type": p.instance_type, "at": p.at,
         "price_micro_per_hour": to_micro(p.price_per_hour)}
        for p in points
    ]  # fmt: skip
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for i in range(0, len(values), BATCH):
        stmt = insert(SPOT_PRICES).values(values[i : i + BATCH])
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["backend", "zone", "instance_type", "at"],
                set_={"price_micro_per_hour": stmt.excluded.price_micro_per_hour},
            )
        )
    session.commit()
    return len(values)


class StoredSpotPrices:
    """`accounting.billing.PriceHistory` over the stored history (one query per zone and type)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._cache: dict[tuple[str, str, str], list[tuple[datetime, int]]] = {}

    def _points(self, backend: str, zone: str, instance_type: str) -> list[tuple[datetime, int]]:
        key = (backend, zone, instance_type)
        if key not in self._cache:
            t = SPOT_PRICES.c
            stmt = (
                select(t.at, t.price_micro_per_hour)
                .where(t.backend == backend, t.zone == zone, t.instance_type == instance_type)
                .order_by(t.at)
            )
            points = []
            for at, price in self.session.execute(stmt):
                when = row_time(at)
                assert when is not None
                points.append((when, int(price)))
            self._cache[key] = points
        return self._cache[key]

    def changes(self, row: ResourceRow, start: datetime, end: datetime) -> Sequence[tuple[datetime, int]]:
        itype = _instance_type(row.offering_id)
        if row.market != Market.SPOT or not row.zone or itype is None:
            return ()
        points = self._points(row.backend, row.zone, itype)
        before = [p for p in points if p[0] <= start]
        return ([before[-1]] if before else []) + [p for p in points if start < p[0] < end]


async def collect_spot_prices(
    session: Session, backend: str, fetch: HistoryFetch, start: datetime, end: datetime
) -> int:
    """Fetch and store the spot price history of every instance type the backend's spot units ran in
    [start, end), per region (one call per region and up to 100 types). Returns the points stored."""
    r = RESOURCES.c
    stmt = select(r.offering_id).where(
        r.backend == backend,
        r.market == str(Market.SPOT),
        r.launched_at.is_not(None),
        r.launched_at < end,
        (r.released_at.is_(None)) | (r.released_at > start),
    )
    by_region: dict[str, set[str]] = defaultdict(set)
    for (offering_id,) in session.execute(stmt.distinct()):
        region, itype = _region(str(offering_id)), _instance_type(str(offering_id))
        if region and itype:
            by_region[region].add(itype)
    stored = 0
    for region, types in sorted(by_region.items()):
        stored += store_spot_prices(session, backend, await fetch(region, sorted(types), start, end))
    return stored

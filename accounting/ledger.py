"""Cost ledger: money per resource per hour (compute, idle, egress) from resources and egress samples.

Rows are keyed (resource, hour, kind) and upserted, so rebuilding a period gives the same ledger.
A resource's paid time is split into `compute` (busy) and `idle` rows, so compute + idle = what was
paid; `list_price_micro` is the same time at the on-demand list price (spot savings = list − paid).
Amounts use cumulative rounding: the hourly rows of a resource add up exactly to the price × time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from policies.egress import marginal_egress_cost
from provisioner.domain import EgressTier, Market, Offering
from provisioner.model import CostLedgerRow, EventRow, ResourceRow, row_time, to_micro

__all__ = [
    "EgressUsage",
    "LedgerBuild",
    "LedgerTotal",
    "build_ledger",
    "ledger_totals",
    "marginal_egress_cost",
]

LEDGER: Table = CostLedgerRow.__table__  # type: ignore[attr-defined]
RESOURCES: Table = ResourceRow.__table__  # type: ignore[attr-defined]
EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
HOUR = timedelta(hours=1)
UPSERT_BATCH = 500
# Events that carry busy/idle history (payload {"busy": bool}); without them only `idle_since` is known.
BUSY_EVENT_KINDS = ("resource.busy", "resource.idle")


@dataclass(frozen=True, slots=True)
class EgressUsage:
    """GB that left `source` ("<provider>:<region>") from one resource during one hour."""

    resource_id: str
    hour: datetime
    gb: float
    source: str


@dataclass(frozen=True, slots=True)
class LedgerBuild:
    rows: int
    resources: int
    egress_rows: int


def offering_family(offering_id: str, offerings: Mapping[str, Offering], backend: str) -> str:
    """The quota family; from the catalog when known, else "<backend>:<instance family>" from the id."""
    known = offerings.get(offering_id)
    if known is not None:
        return known.family
    parts = offering_id.split(":")
    if len(parts) >= 3:
        return f"{parts[0]}:{parts[2].split('.')[0]}"
    return backend


def list_price_micro_per_hour(
    row: ResourceRow, offerings: Mapping[str, Offering], list_prices: Mapping[str, Decimal]
) -> int:
    """On-demand equivalent per unit-hour: explicit list price, else the on-demand twin of a spot
    offering, else what was paid (allocation and backfill: 0 unless a value is given)."""
    if row.offering_id in list_prices:
        return to_micro(list_prices[row.offering_id])
    if row.market == Market.SPOT:
        twin = offerings.get(row.offering_id.removesuffix(":spot") + ":on_demand")
        if twin is not None:
            return to_micro(twin.price_per_hour)
    return int(row.price_micro_per_hour)


def _hour_floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _micro(rate_micro_per_hour: int, seconds: Decimal) -> int:
    return int((Decimal(rate_micro_per_hour) * seconds / 3600).to_integral_value(rounding=ROUND_HALF_EVEN))


def _overlap(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> Decimal:
    lo, hi = max(a0, b0), min(a1, b1)
    return Decimal((hi - lo).total_seconds()) if hi > lo else Decimal(0)


def idle_intervals(
    row: ResourceRow, events: Sequence[tuple[datetime, bool]], until: datetime
) -> list[tuple[datetime, datetime]]:
    """When the resource held no job: from busy/idle events, and from `idle_since` to release."""
    out: list[tuple[datetime, datetime]] = []
    idle_from: datetime | None = None
    for at, busy in sorted(events):
        if not busy and idle_from is None:
            idle_from = at
        elif busy and idle_from is not None:
            out.append((idle_from, at))
            idle_from = None
    since = row_time(row.idle_since)
    if idle_from is None and since is not None and not row.busy:
        idle_from = since
    if idle_from is not None and idle_from < until:
        out.append((idle_from, until))
    return out


def resource_rows(
    row: ResourceRow,
    start: datetime,
    end: datetime,
    *,
    family: str,
    list_micro_per_hour: int,
    idle: Sequence[tuple[datetime, datetime]],
    now: datetime,
) -> list[dict[str, Any]]:
    """Ledger rows (compute and idle) of one resource for the hours in [start, end)."""
    launched = row_time(row.launched_at)
    if launched is None:
        return []
    stop = row_time(row.released_at) or now
    lo, hi = max(launched, start), min(stop, end)
    if hi <= lo:
        return []
    rate = int(row.price_micro_per_hour)
    hs23_per_unit = row.cores * row.hs23_per_core
    base = {
        "resource_id": row.id,
        "experiment": row.experiment or "unknown",
        "backend": row.backend,
        "offering_id": row.offering_id,
        "offering_family": family,
        "market": row.market,
        "egress_gb": 0.0,
    }
    out = []
    hour = _hour_floor(lo)
    while hour < hi:
        h0, h1 = max(hour, lo), min(hour + HOUR, hi)
        # Cumulative rounding from launch: the sum over hours equals round(rate × total time).
        before = Decimal((h0 - launched).total_seconds())
        during = Decimal((h1 - h0).total_seconds())
        paid = _micro(rate, before + during) - _micro(rate, before)
        listed = _micro(list_micro_per_hour, before + during) - _micro(list_micro_per_hour, before)
        idle_s = sum((_overlap(h0, h1, a, b) for a, b in idle), Decimal(0))
        idle_s = min(idle_s, during)
        busy_s = during - idle_s
        idle_paid = int((Decimal(paid) * idle_s / during).to_integral_value()) if during else 0
        idle_list = int((Decimal(listed) * idle_s / during).to_integral_value()) if during else 0
        out.append(
            base
            | {
                "hour": hour,
                "kind": "compute",
                "amount_micro": paid - idle_paid,
                "list_price_micro": listed - idle_list,
                "hs23_hours": float(busy_s) / 3600 * hs23_per_unit,
            }
        )
        if idle_s > 0:
            out.append(
                base
                | {
                    "hour": hour,
                    "kind": "idle",
                    "amount_micro": idle_paid,
                    "list_price_micro": idle_list,
                    "hs23_hours": 0.0,
                }
            )
        hour += HOUR
    return out


def egress_rows(
    samples: Sequence[EgressUsage],
    resources: Mapping[str, ResourceRow],
    families: Mapping[str, str],
    tiers: Mapping[str, Sequence[EgressTier]],
    used_before_gb: Mapping[str, float],
) -> list[dict[str, Any]]:
    """Egress rows priced at the marginal tier rate, GB accumulated per source location and month."""
    per_key: dict[tuple[str, datetime, str], float] = defaultdict(float)
    for s in samples:
        per_key[(s.resource_id, _hour_floor(s.hour.astimezone(UTC)), s.source)] += s.gb
    used: dict[tuple[str, int, int], float] = {}
    out = []
    for (rid, hour, source), gb in sorted(per_key.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        row = resources.get(rid)
        if row is None:
            raise KeyError(f"egress sample for resource {rid}: no such resource")
        month_key = (source, hour.year, hour.month)
        already = used.setdefault(month_key, used_before_gb.get(source, 0.0))
        cost = marginal_egress_cost(gb, already, tiers.get(source, ()))
        used[month_key] = already + gb
        amount = to_micro(cost)
        out.append(
            {
                "resource_id": rid,
                "hour": hour,
                "kind": "egress",
                "experiment": row.experiment or "unknown",
                "backend": row.backend,
                "offering_id": row.offering_id,
                "offering_family": families[rid],
                "market": row.market,
                "amount_micro": amount,
                "list_price_micro": amount,
                "hs23_hours": 0.0,
                "egress_gb": gb,
            }
        )
    return out


def _busy_events(session: Session, ids: Sequence[str]) -> dict[str, list[tuple[datetime, bool]]]:
    out: dict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    if not ids:
        return out
    stmt = select(EVENTS.c.subject, EVENTS.c.at, EVENTS.c.kind, EVENTS.c.payload).where(
        EVENTS.c.kind.in_(BUSY_EVENT_KINDS), EVENTS.c.subject.in_(ids)
    )
    for subject, at, kind, payload in session.execute(stmt):
        busy = bool(payload.get("busy", kind == "resource.busy")) if isinstance(payload, dict) else False
        when = row_time(at)
        assert when is not None
        out[subject].append((when, busy))
    return out


def build_ledger(
    session: Session,
    start: datetime,
    end: datetime,
    *,
    offerings: Mapping[str, Offering] | None = None,
    list_prices: Mapping[str, Decimal] | None = None,
    egress: Sequence[EgressUsage] = (),
    egress_tiers: Mapping[str, Sequence[EgressTier]] | None = None,
    egress_used_before_gb: Mapping[str, float] | None = None,
    now: datetime | None = None,
) -> LedgerBuild:
    """Write (or rewrite) the ledger rows of every resource that ran during [start, end).

    `egress_used_before_gb`: GB already sent from each source location this month before `start`,
    so the marginal tiers continue where they were (tiers restart each calendar month).
    """
    now = now or datetime.now(UTC)
    offerings = offerings or {}
    list_prices = list_prices or {}
    r = RESOURCES.c
    ran = and_(
        r.launched_at.is_not(None),
        r.launched_at < end,
        or_(r.released_at.is_(None), r.released_at > start),
    )
    resources = {row.id: row for row in session.execute(select(ResourceRow).where(ran)).scalars()}
    families = {
        rid: offering_family(row.offering_id, offerings, row.backend) for rid, row in resources.items()
    }
    events = _busy_events(session, list(resources))
    values: list[dict[str, Any]] = []
    for rid, row in resources.items():
        until = row_time(row.released_at) or now
        values.extend(
            resource_rows(
                row,
                start,
                end,
                family=families[rid],
                list_micro_per_hour=list_price_micro_per_hour(row, offerings, list_prices),
                idle=idle_intervals(row, events.get(rid, []), until),
                now=now,
            )
        )
    sample_ids = {s.resource_id for s in egress} - set(resources)
    if sample_ids:  # egress from resources outside the period's running set still belongs to them
        extra = session.execute(select(ResourceRow).where(r.id.in_(sample_ids))).scalars()
        for row in extra:
            resources[row.id] = row
            families[row.id] = offering_family(row.offering_id, offerings, row.backend)
    in_period = [s for s in egress if start <= s.hour.astimezone(UTC) < end]
    egress_values = egress_rows(
        in_period, resources, families, egress_tiers or {}, egress_used_before_gb or {}
    )
    values.extend(egress_values)
    # Compute/idle rows are rebuilt whole for these resources: an hour that no longer applies (the
    # release time was corrected, an idle spell turned out busy) must not linger from an earlier build.
    ids = [rid for rid in resources if rid not in sample_ids]
    for i in range(0, len(ids), UPSERT_BATCH):
        session.execute(
            LEDGER.delete().where(
                LEDGER.c.resource_id.in_(ids[i : i + UPSERT_BATCH]),
                LEDGER.c.hour >= start,
                LEDGER.c.hour < end,
                LEDGER.c.kind.in_(("compute", "idle")),
            )
        )
    _upsert(session, values)
    return LedgerBuild(rows=len(values), resources=len(resources), egress_rows=len(egress_values))


def _upsert(session: Session, values: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    for start in range(0, len(values), UPSERT_BATCH):
        stmt = insert(LEDGER).values(values[start : start + UPSERT_BATCH])
        updates = {
            c: stmt.excluded[c]
            for c in ("experiment", "backend", "offering_id", "offering_family", "market", "amount_micro",
                      "list_price_micro", "hs23_hours", "egress_gb")
        }  # fmt: skip
        session.execute(
            stmt.on_conflict_do_update(index_elements=["resource_id", "hour", "kind"], set_=updates)
        )
    session.commit()


# ---- totals (SQL aggregation) ----------------------------------------------------------------

GROUPINGS = ("experiment", "backend", "offering_family", "market", "kind", "month", "day")


def period_expr(session: Session, grain: str) -> ColumnElement[str]:
    """ "YYYY-MM" or "YYYY-MM-DD" of the ledger hour in UTC, in the session's SQL dialect."""
    hour = LEDGER.c.hour
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", hour), "YYYY-MM" if grain == "month" else "YYYY-MM-DD")
    return func.strftime("%Y-%m" if grain == "month" else "%Y-%m-%d", hour)


@dataclass(frozen=True, slots=True)
class LedgerTotal:
    key: tuple[str, ...]
    amount: Decimal  # USD paid
    list_amount: Decimal  # USD at on-demand list price
    hs23_hours: float
    egress_gb: float
    amount_micro: int
    list_micro: int

    @classmethod
    def from_row(cls, row: Sequence[Any], keys: int) -> LedgerTotal:
        """A result row: `keys` grouping columns, then sum(amount), sum(list), sum(HS23-h), sum(GB)."""
        amount, listed, hs23, gb = row[keys:]
        return cls(
            tuple(str(v) for v in row[:keys]),
            Decimal(int(amount)) / 1_000_000,
            Decimal(int(listed)) / 1_000_000,
            float(hs23),
            float(gb),
            int(amount),
            int(listed),
        )


def ledger_totals(
    session: Session,
    start: datetime,
    end: datetime,
    by: Sequence[str],
    *,
    experiment: str | None = None,
    kinds: Sequence[str] | None = None,
) -> list[LedgerTotal]:
    """Sums over the ledger in [start, end) grouped by `by` (names from GROUPINGS), in SQL."""
    cols: list[ColumnElement[Any]] = []
    for name in by:
        if name not in GROUPINGS:
            raise ValueError(f"grouping {name!r}: expected one of {GROUPINGS}")
        cols.append(period_expr(session, name) if name in ("month", "day") else LEDGER.c[name])
    cond = [LEDGER.c.hour >= start, LEDGER.c.hour < end]
    if experiment is not None:
        cond.append(LEDGER.c.experiment == experiment)
    if kinds is not None:
        cond.append(LEDGER.c.kind.in_(kinds))
    stmt = select(
        *cols,
        func.coalesce(func.sum(LEDGER.c.amount_micro), 0),
        func.coalesce(func.sum(LEDGER.c.list_price_micro), 0),
        func.coalesce(func.sum(LEDGER.c.hs23_hours), 0.0),
        func.coalesce(func.sum(LEDGER.c.egress_gb), 0.0),
    ).where(*cond)
    if cols:
        stmt = stmt.group_by(*cols).order_by(*cols)
    return [LedgerTotal.from_row(row, len(cols)) for row in session.execute(stmt)]

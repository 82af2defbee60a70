"""Cost ledger: money per resource per hour (compute, idle, egress) from resources and egress samples.

Rows are keyed (resource, hour, kind) and upserted, so rebuilding a period gives the same ledger.
Compute and idle rows are the billing model's slices (`accounting.billing`) summed per hour: a
resource's paid time is split into `compute` (busy) and `idle` rows, so compute + idle = what was
billed; `list_price_micro` is the same time at the on-demand list price (spot savings = list − paid).
Amounts use cumulative rounding: the hourly rows of a resource add up exactly to what it was billed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from accounting.billing import PriceHistory, UnitFacts, load_units, slices
from policies.egress import marginal_egress_cost
from provisioner.domain import EgressTier, Market, Offering
from provisioner.model import CostLedgerRow, EventRow, ResourceRow, to_micro

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
    offering, else the price recorded at creation (allocation and backfill: 0 unless a value is given).
    A reference price for spot savings, not money spent: that is the billing model's slices."""
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


def unit_rows(
    unit: UnitFacts,
    start: datetime,
    end: datetime,
    *,
    family: str,
    list_micro_per_hour: int,
    as_of: datetime,
) -> list[dict[str, Any]]:
    """Ledger rows of one unit for the hours in [start, end): its billing slices, summed per hour
    into `compute` (a job running) and `idle` (paid, no job). Amounts are the billing model's, so
    the hours of a unit sum exactly to what it was billed; `hs23_hours` is delivered (busy) work,
    `hs23_hours_held` the capacity paid for."""
    span = unit.span(as_of)
    if span is None:
        return []
    lo, hi = max(span[0], start), min(span[1], end)
    if hi <= lo:
        return []
    base = {
        "resource_id": unit.resource_id,
        "experiment": unit.experiment or "unknown",
        "backend": unit.backend,
        "offering_id": unit.offering_id,
        "offering_family": family,
        "market": unit.market,
        "egress_gb": 0.0,
    }
    per_hour: dict[tuple[datetime, str], dict[str, Any]] = {}
    hour = _hour_floor(lo)
    while hour < hi:
        for piece in slices(unit, max(hour, lo), min(hour + HOUR, hi), as_of=as_of):
            kind = "compute" if piece.busy else "idle"
            row = per_hour.setdefault(
                (hour, kind),
                base | {"hour": hour, "kind": kind, "amount_micro": 0, "list_price_micro": 0,
                        "hs23_hours": 0.0, "hs23_hours_held": 0.0},
            )  # fmt: skip
            # list value: the same time at the on-demand list rate, rounded cumulatively from the start
            before = Decimal((piece.start - span[0]).total_seconds())
            during = Decimal((piece.end - piece.start).total_seconds())
            row["amount_micro"] += piece.amount_micro
            row["list_price_micro"] += _micro(list_micro_per_hour, before + during) - _micro(
                list_micro_per_hour, before
            )
            row["hs23_hours"] += piece.hs23_hours_delivered
            row["hs23_hours_held"] += piece.hs23_hours_held
        hour += HOUR
    return list(per_hour.values())


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
                "hs23_hours_held": 0.0,
                "egress_gb": gb,
            }
        )
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
    prices: PriceHistory | None = None,
) -> LedgerBuild:
    """Write (or rewrite) the ledger rows of every unit billed during [start, end), from the billing
    model (`accounting.billing`): money, busy/idle split and HS23-hours are its figures.

    `egress_used_before_gb`: GB already sent from each source location this month before `start`,
    so the marginal tiers continue where they were (tiers restart each calendar month).
    """
    now = now or datetime.now(UTC)
    offerings = offerings or {}
    list_prices = list_prices or {}
    r = RESOURCES.c
    units = {u.resource_id: u for u in load_units(session, start, end, as_of=now, prices=prices)}
    unit_ids = list(units)
    resources: dict[str, ResourceRow] = {}
    for i in range(0, len(unit_ids), UPSERT_BATCH):
        chunk = unit_ids[i : i + UPSERT_BATCH]
        resources.update(
            (row.id, row) for row in session.execute(select(ResourceRow).where(r.id.in_(chunk))).scalars()
        )
    families = {
        rid: offering_family(row.offering_id, offerings, row.backend) for rid, row in resources.items()
    }
    values: list[dict[str, Any]] = []
    for rid, unit in units.items():
        values.extend(
            unit_rows(
                unit,
                start,
                end,
                family=families[rid],
                list_micro_per_hour=list_price_micro_per_hour(resources[rid], offerings, list_prices),
                as_of=now,
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
                      "list_price_micro", "hs23_hours", "hs23_hours_held", "egress_gb")
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
    hs23_hours: float  # delivered (busy)
    egress_gb: float
    amount_micro: int
    list_micro: int
    # held (billable, busy or idle); readers that predate the column give 0 (not compared)
    hs23_hours_held: float = field(default=0.0, compare=False)

    @classmethod
    def from_row(cls, row: Sequence[Any], keys: int) -> LedgerTotal:
        """A result row: `keys` grouping columns, then sum(amount), sum(list), sum(HS23-h delivered),
        sum(GB) and, where the reader has it, sum(HS23-h held)."""
        amount, listed, hs23, gb, *held = row[keys:]
        return cls(
            tuple(str(v) for v in row[:keys]),
            Decimal(int(amount)) / 1_000_000,
            Decimal(int(listed)) / 1_000_000,
            float(hs23),
            float(gb),
            int(amount),
            int(listed),
            float(held[0]) if held else 0.0,
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
        func.coalesce(func.sum(LEDGER.c.hs23_hours_held), 0.0),
    ).where(*cond)
    if cols:
        stmt = stmt.group_by(*cols).order_by(*cols)
    return [LedgerTotal.from_row(row, len(cols)) for row in session.execute(stmt)]

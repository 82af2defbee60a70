"""Bulk aggregation with DuckDB over exported usage and ledger tables (millions of rows, seconds).

The same grouping as `accounting.summaries` (APEL summary keys) and `accounting.ledger.ledger_totals`
(finance views), for tables with the `usage_records` / `cost_ledger` columns held in DuckDB (loaded
from Parquet/CSV exports, or generated). Times in these tables are naive UTC TIMESTAMPs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import duckdb

from accounting.apel import JobGroup, SyncCount
from accounting.ledger import GROUPINGS, LedgerTotal
from accounting.period import Month
from accounting.summaries import JOB_KINDS

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The publish checks of `accounting.usage.valid_row_condition`, in SQL text.
VALID_USAGE = (
    "end_time IS NOT NULL AND wall_seconds >= 0 AND cpu_seconds >= 0 AND cores >= 1 AND nodes >= 1 "
    "AND hs23_per_core BETWEEN 3.0 AND 80.0 AND cpu_seconds <= wall_seconds * cores * 1.1 + 60 "
    "AND end_time >= start_time"
)


def _table(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"table name {name!r}: expected a plain identifier")
    return name


def _naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None)


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def job_groups(con: duckdb.DuckDBPyConnection, table: str, month: Month) -> list[JobGroup]:
    """Jobs that ended in `month`, grouped on every APEL summary key (see `summaries.job_groups`)."""
    kinds = ", ".join(f"'{k}'" for k in JOB_KINDS)
    rows = con.execute(
        f"""
        SELECT site, experiment, fqan, global_user_name, submit_host, hs23_per_core, nodes, cores,
               SUM(wall_seconds), SUM(cpu_seconds), COUNT(*), MIN(end_time), MAX(end_time)
        FROM {_table(table)}
        WHERE kind IN ({kinds}) AND end_time >= ? AND end_time < ? AND {VALID_USAGE}
        GROUP BY site, experiment, fqan, global_user_name, submit_host, hs23_per_core, nodes, cores
        """,
        [_naive(month.start), _naive(month.end)],
    ).fetchall()
    return [
        JobGroup(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            float(r[5]),
            int(r[6]),
            int(r[7]),
            int(r[8]),
            int(r[9]),
            int(r[10]),
            _aware(r[11]),
            _aware(r[12]),
        )
        for r in rows
    ]


def sync_counts(con: duckdb.DuckDBPyConnection, table: str, month: Month) -> list[SyncCount]:
    kinds = ", ".join(f"'{k}'" for k in JOB_KINDS)
    rows = con.execute(
        f"""
        SELECT site, submit_host, COUNT(*) FROM {_table(table)}
        WHERE kind IN ({kinds}) AND end_time >= ? AND end_time < ? AND {VALID_USAGE}
        GROUP BY site, submit_host ORDER BY site, submit_host
        """,
        [_naive(month.start), _naive(month.end)],
    ).fetchall()
    return [SyncCount(s, h, month.year, month.month, int(n)) for s, h, n in rows]


def ledger_totals(
    con: duckdb.DuckDBPyConnection, table: str, start: datetime, end: datetime, by: Sequence[str]
) -> list[LedgerTotal]:
    """As `accounting.ledger.ledger_totals`, over a DuckDB table with the cost_ledger columns."""
    cols = []
    for name in by:
        if name not in GROUPINGS:
            raise ValueError(f"grouping {name!r}: expected one of {GROUPINGS}")
        if name == "month":
            cols.append("strftime(hour, '%Y-%m')")
        elif name == "day":
            cols.append("strftime(hour, '%Y-%m-%d')")
        else:
            cols.append(name)
    select = ", ".join([*cols, ""]) if cols else ""
    group = f"GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}" if cols else ""
    rows = con.execute(
        f"""
        SELECT {select} COALESCE(SUM(amount_micro), 0)::HUGEINT, COALESCE(SUM(list_price_micro), 0)::HUGEINT,
               COALESCE(SUM(hs23_hours), 0), COALESCE(SUM(egress_gb), 0)
        FROM {_table(table)} WHERE hour >= ? AND hour < ? {group}
        """,
        [_naive(start), _naive(end)],
    ).fetchall()
    return [LedgerTotal.from_row(row, len(cols)) for row in rows]


def ledger_views(
    con: duckdb.DuckDBPyConnection,
    table: str,
    start: datetime,
    end: datetime,
    views: Mapping[str, Sequence[str]],
) -> dict[str, list[LedgerTotal]]:
    """Several `ledger_totals` groupings in one scan of the table (GROUPING SETS), keyed by view name."""
    names = sorted({c for by in views.values() for c in by})
    for name in names:
        if name not in GROUPINGS:
            raise ValueError(f"grouping {name!r}: expected one of {GROUPINGS}")
    by_mask: dict[int, list[tuple[str, Sequence[str]]]] = {}
    for view, by in views.items():
        # GROUPING(a, b, …) sets a bit for each column rolled up (not grouped), first column highest.
        mask = sum(1 << (len(names) - 1 - i) for i, c in enumerate(names) if c not in by)
        by_mask.setdefault(mask, []).append((view, by))
    exprs = {"month": "strftime(hour, '%Y-%m')", "day": "strftime(hour, '%Y-%m-%d')"}
    inner = ", ".join([*(f"{exprs.get(c, c)} AS {c}" for c in names), ""])
    sets = ", ".join(
        "(" + ", ".join(by) + ")" for by in {tuple(sorted(b)): b for b in views.values()}.values()
    )
    gid = f"GROUPING({', '.join(names)})" if names else "0"
    rows = con.execute(
        f"""
        SELECT {", ".join([*names, ""])} {gid} AS gid,
               SUM(amount_micro)::HUGEINT, SUM(list_price_micro)::HUGEINT, SUM(hs23_hours), SUM(egress_gb)
        FROM (SELECT {inner} amount_micro, list_price_micro, hs23_hours, egress_gb
              FROM {_table(table)} WHERE hour >= ? AND hour < ?)
        GROUP BY GROUPING SETS ({sets or "()"})
        """,
        [_naive(start), _naive(end)],
    ).fetchall()
    out: dict[str, list[LedgerTotal]] = {view: [] for view in views}
    for row in rows:
        values = dict(zip(names, row[: len(names)], strict=True))
        mask, amount, listed, hs23, gb = row[len(names) :]
        for view, by in by_mask.get(int(mask), []):
            out[view].append(
                LedgerTotal(
                    tuple(str(values[c]) for c in by),
                    Decimal(int(amount or 0)) / 1_000_000,
                    Decimal(int(listed or 0)) / 1_000_000,
                    float(hs23 or 0),
                    float(gb or 0),
                    int(amount or 0),
                    int(listed or 0),
                )
            )
    for totals in out.values():
        totals.sort(key=lambda t: t.key)
    return out

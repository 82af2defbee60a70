"""The DuckDB bulk path groups usage exactly like the SQL path publishing uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
from sqlalchemy import select
from sqlmodel import Session

from accounting import bulk, summaries
from accounting.ledger import LEDGER
from accounting.period import Month
from accounting.usage import import_records, record_to_values
from tests.accounting.conftest import OCT, job

NOW = datetime(2026, 11, 23, tzinfo=UTC)
COLUMNS = ("record_key", "kind", "experiment", "fqan", "global_user_name", "site", "submit_host", "start_time",
           "end_time", "wall_seconds", "cpu_seconds", "cores", "nodes", "hs23_per_core")  # fmt: skip


def test_duckdb_groups_match_the_database_groups(session: Session) -> None:
    records = [
        job(
            n,
            cores=1 + n % 3,
            cpu_seconds=7000 * (1 + n % 3),
            hs23_per_core=(12.5, 16.3)[n % 2],
            fqan=None if n % 5 == 0 else "/atlas/Role=production",
        )
        for n in range(300)
    ]
    september = job(999, end_time=OCT - timedelta(hours=1), start_time=OCT - timedelta(hours=3))
    records.append(september)
    import_records(session, records, now=NOW)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE usage (record_key VARCHAR, kind VARCHAR, experiment VARCHAR, fqan VARCHAR, "
        "global_user_name VARCHAR, site VARCHAR, submit_host VARCHAR, start_time TIMESTAMP, end_time TIMESTAMP, "
        "wall_seconds BIGINT, cpu_seconds BIGINT, cores INT, nodes INT, hs23_per_core DOUBLE)"
    )
    rows = []
    for r in records:
        v = record_to_values(r)
        v["start_time"] = v["start_time"].replace(tzinfo=None)
        v["end_time"] = v["end_time"].replace(tzinfo=None)
        rows.append(tuple(v[c] for c in COLUMNS))
    con.executemany(f"INSERT INTO usage VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    month = Month(2026, 10)
    from_db = sorted(summaries.job_groups(session, month), key=repr)
    from_duck = sorted(bulk.job_groups(con, "usage", month), key=repr)
    assert from_db == from_duck
    assert sum(g.jobs for g in from_duck) == 300
    assert bulk.sync_counts(con, "usage", month) == summaries.sync_counts(session, month)


def test_duckdb_report_views_match_the_database_totals(session: Session) -> None:
    from accounting.ledger import ledger_totals
    from tests.accounting.test_reports import OCT as OCTOBER
    from tests.accounting.test_reports import scenario

    scenario(session)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE ledger (resource_id VARCHAR, hour TIMESTAMP, kind VARCHAR, experiment VARCHAR, "
        "backend VARCHAR, offering_id VARCHAR, offering_family VARCHAR, market VARCHAR, amount_micro BIGINT, "
        "list_price_micro BIGINT, hs23_hours DOUBLE, egress_gb DOUBLE)"
    )
    columns = ("resource_id", "hour", "kind", "experiment", "backend", "offering_id", "offering_family", "market",
               "amount_micro", "list_price_micro", "hs23_hours", "egress_gb")  # fmt: skip
    rows = session.execute(select(*(LEDGER.c[c] for c in columns))).all()
    con.executemany(
        "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [tuple(r) for r in rows]
    )
    views = {"exp": ["experiment"], "bm": ["backend", "market"], "day": ["experiment", "day"], "total": []}
    got = bulk.ledger_views(con, "ledger", OCTOBER.start, OCTOBER.end, views)
    for name, by in views.items():
        assert got[name] == ledger_totals(session, OCTOBER.start, OCTOBER.end, by), name
        assert got[name] == bulk.ledger_totals(con, "ledger", OCTOBER.start, OCTOBER.end, by), name
    assert got["total"][0].amount_micro == 420_000_000

"""Benchmark: 10,000,000 job usage records → APEL monthly summaries, and a month's cost report.

    python benchmarks/accounting_scale.py [--records 10000000] [--ledger-rows 10000000]

Records are generated columnar inside DuckDB (never as Python objects); the APEL grouping and the
finance views run as DuckDB SQL (`accounting.bulk`; the nine report views in one GROUPING SETS scan),
then the same `accounting.apel` code as publishing turns the groups into messages. The baseline, measured in the same run, is a plain
Python loop doing the summary grouping over the first 1,000,000 records; both give the same totals
(checked). Writes benchmarks/results/accounting_scale.json and .md: wall time per phase and peak
memory (ru_maxrss for the process; tracemalloc for the Python message building).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from accounting import apel, bulk  # noqa: E402
from accounting.period import Month  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
LOAD_AT_START = round(os.getloadavg()[0], 2)  # the machine is shared: read timings with this in mind
MONTH = Month(2026, 10)
BASELINE_ROWS = 1_000_000

USAGE_SQL = """
CREATE OR REPLACE TABLE {name} AS
WITH r AS (
    SELECT i, hash(i) AS h1, hash(i + 1000000007) AS h2, hash(i * 31 + 7) AS h3
    FROM range({n}) t(i)
), c AS (
    SELECT i, h1, h2, h3,
        (['atlas', 'cms', 'lhcb', 'alice', 'dune', 'lsst', 'ska', 'herd'])[1 + (h1 % 8)::INT] AS experiment,
        600 + (h2 % 86400)::BIGINT AS wall_seconds,
        (ARRAY[1, 8, 8, 16])[1 + ((h1 >> 8) % 4)::INT] AS cores,
        -- 3 days of September so the month filter has work to do
        TIMESTAMP '2026-09-28 00:00:00' + to_seconds(((h3 % (34 * 86400)))::BIGINT) AS end_time
    FROM r
)
SELECT
    'UKI-SITE-' || (i % 2)::VARCHAR || ':job:' || i::VARCHAR AS record_key,
    'job' AS kind,
    experiment,
    CASE WHEN (h2 >> 16) % 4 = 0 THEN NULL
         ELSE '/' || experiment || '/Role=' || (['production', 'pilot', 'user'])[1 + ((h2 >> 20) % 3)::INT]
              || '/Capability=NULL' END AS fqan,
    '/DC=org/CN=' || experiment || ' user ' || ((h1 >> 16) % 10)::VARCHAR AS global_user_name,
    'UKI-SITE-' || (i % 2)::VARCHAR AS site,
    'ce0' || ((h3 >> 8) % 4)::VARCHAR || '.example.org' AS submit_host,
    end_time - to_seconds(wall_seconds) AS start_time,
    end_time,
    wall_seconds,
    (wall_seconds * cores * 0.85)::BIGINT AS cpu_seconds,
    cores,
    1 AS nodes,
    (ARRAY[12.5, 16.3, 24.8])[1 + ((h3 >> 16) % 3)::INT]::DOUBLE AS hs23_per_core
FROM c
"""

LEDGER_SQL = """
CREATE OR REPLACE TABLE {name} AS
WITH r AS (SELECT i, hash(i * 13 + 5) AS h FROM range({n}) t(i))
SELECT
    'r' || (i // 744)::VARCHAR AS resource_id,
    TIMESTAMP '2026-10-01 00:00:00' + to_hours((i % 744)::BIGINT) AS hour,
    CASE WHEN h % 100 < 5 THEN 'idle' WHEN h % 100 < 6 THEN 'egress' ELSE 'compute' END AS kind,
    (['atlas', 'cms', 'lhcb', 'alice', 'dune', 'lsst', 'ska', 'herd'])[1 + ((i // 744) % 8)::INT] AS experiment,
    (['aws', 'gce', 'maxwell', 'backfill'])[1 + ((i // 744 // 8) % 4)::INT] AS backend,
    (['aws:m7i', 'gce:n2', 'slurm:cpu', 'backfill:cpu'])[1 + ((i // 744 // 8) % 4)::INT] AS offering_family,
    (['on_demand', 'spot', 'allocation', 'backfill'])[1 + ((i // 744 // 8) % 4)::INT] AS market,
    CASE ((i // 744 // 8) % 4) WHEN 0 THEN 403200 WHEN 1 THEN 120000 ELSE 0 END::BIGINT AS amount_micro,
    CASE ((i // 744 // 8) % 4) WHEN 0 THEN 403200 WHEN 1 THEN 390000 ELSE 0 END::BIGINT AS list_price_micro,
    100.0 AS hs23_hours,
    CASE WHEN h % 100 = 5 THEN 3.5 ELSE 0.0 END AS egress_gb
FROM r
"""


VIEWS = {
    "experiment": ["experiment"],
    "backend": ["backend"],
    "offering_family": ["offering_family"],
    "market": ["market"],
    "kind": ["kind"],
    "experiment+day": ["experiment", "day"],
    "backend+market": ["backend", "market"],
    "month": ["month"],
    "total": [],
}


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def python_loop_groups(
    rows: list[tuple[Any, ...]], start: datetime, end: datetime
) -> dict[tuple[Any, ...], list[int]]:
    """The baseline: the same grouping as a plain Python loop over fetched rows."""
    acc: dict[tuple[Any, ...], list[int]] = {}
    for site, exp, fqan, dn, host, hs23, nodes, cores, wall, cpu, end_time, start_time in rows:
        if (
            not (start <= end_time < end)
            or wall < 0
            or cpu < 0
            or cpu > wall * cores * 1.1 + 60
            or end_time < start_time
        ):
            continue
        key = (site, exp, fqan, dn, host, hs23, nodes, cores)
        a = acc.get(key)
        if a is None:
            acc[key] = [wall, cpu, 1]
        else:
            a[0] += wall
            a[1] += cpu
            a[2] += 1
    return acc


def main(
    records: int = typer.Option(10_000_000, help="job usage records to generate"),
    ledger_rows: int = typer.Option(10_000_000, help="cost-ledger rows (resource-hours) to generate"),
    threads: int = typer.Option(2, help="DuckDB threads"),
) -> None:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    phases: dict[str, float] = {}

    _, phases["generate_usage_s"] = timed(con.execute, USAGE_SQL.format(name="usage", n=records))
    _, phases["generate_ledger_s"] = timed(con.execute, LEDGER_SQL.format(name="ledger", n=ledger_rows))
    rss_after_generate = peak_rss_mb()

    # APEL: groups in SQL, then the publish code path builds the messages.
    t0 = time.perf_counter()
    groups = bulk.job_groups(con, "usage", MONTH)
    phases["summary_sql_s"] = time.perf_counter() - t0

    def build_messages() -> tuple[list[apel.JobSummary], list[str], list[apel.NormalisedSummary], list[str]]:
        plain = apel.summaries_from_groups(groups, MONTH.year, MONTH.month)
        norm = apel.normalised_from_groups(groups, MONTH.year, MONTH.month)
        return plain, apel.summary_messages(plain), norm, apel.normalised_messages(norm)

    (summaries, summary_messages, normalised, normalised_messages), phases["summary_messages_s"] = timed(
        build_messages
    )
    tracemalloc.start()  # a second, untimed pass: tracemalloc slows Python down severalfold
    build_messages()
    _, messages_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    syncs, phases["sync_sql_s"] = timed(bulk.sync_counts, con, "usage", MONTH)
    phases["apel_total_s"] = phases["summary_sql_s"] + phases["summary_messages_s"] + phases["sync_sql_s"]
    jobs_in_month = sum(g.jobs for g in groups)
    assert (
        jobs_in_month
        == sum(s.jobs for s in summaries)
        == sum(n.jobs for n in normalised)
        == sum(s.jobs for s in syncs)
    )

    # Finance: the nine views of the monthly cost report, in one scan of the ledger (GROUPING SETS).
    views, phases["cost_report_sql_s"] = timed(
        bulk.ledger_views, con, "ledger", MONTH.start, MONTH.end, VIEWS
    )
    total = views["total"][0]
    assert sum(t.amount_micro for t in views["experiment"]) == total.amount_micro
    # the same views one query each, for comparison
    t2 = time.perf_counter()
    for by in VIEWS.values():
        bulk.ledger_totals(con, "ledger", MONTH.start, MONTH.end, by)
    phases["cost_report_one_query_per_view_s"] = time.perf_counter() - t2

    # Baseline on the same first 1M records: Python loop vs DuckDB.
    n_base = min(BASELINE_ROWS, records)
    con.execute(f"CREATE OR REPLACE TABLE usage_1m AS SELECT * FROM usage LIMIT {n_base}")
    fetch_t0 = time.perf_counter()
    rows = con.execute(
        "SELECT site, experiment, fqan, global_user_name, submit_host, hs23_per_core, nodes, cores, wall_seconds, "
        "cpu_seconds, end_time, start_time FROM usage_1m"
    ).fetchall()
    phases["baseline_fetch_1m_s"] = time.perf_counter() - fetch_t0
    start, end = MONTH.start.replace(tzinfo=None), MONTH.end.replace(tzinfo=None)
    loop, phases["baseline_python_loop_1m_s"] = timed(python_loop_groups, rows, start, end)
    del rows
    duck_1m, phases["duckdb_groups_1m_s"] = timed(bulk.job_groups, con, "usage_1m", MONTH)
    assert sum(v[2] for v in loop.values()) == sum(g.jobs for g in duck_1m)
    assert sum(v[0] for v in loop.values()) == sum(g.wall_seconds for g in duck_1m)

    result: dict[str, Any] = {
        "benchmark": "accounting_scale",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "duckdb": duckdb.__version__,
            "duckdb_threads": threads,
        },
        "load_average_1m_at_start": LOAD_AT_START,
        "records": records,
        "records_in_month": jobs_in_month,
        "ledger_rows": ledger_rows,
        "summary_groups_sql": len(groups),
        "summary_records": len(summaries),
        "summary_messages": len(summary_messages),
        "normalised_records": len(normalised),
        "normalised_messages": len(normalised_messages),
        "sync_records": len(syncs),
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "records_per_s_apel": round(records / phases["apel_total_s"]),
        "ledger_rows_per_s_report": round(ledger_rows / phases["cost_report_sql_s"]),
        "baseline": {
            "rows": n_base,
            "python_loop_s": round(phases["baseline_python_loop_1m_s"], 3),
            "duckdb_s": round(phases["duckdb_groups_1m_s"], 3),
            "python_over_duckdb": round(
                phases["baseline_python_loop_1m_s"] / phases["duckdb_groups_1m_s"], 1
            ),
            "note": "Python loop excludes the time to fetch the rows out of DuckDB (baseline_fetch_1m_s)",
        },
        "memory": {
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_after_generation_mb": round(rss_after_generate, 1),
            "message_building_tracemalloc_peak_mb": round(messages_peak / 1e6, 2),
        },
        "month_total_usd": str(total.amount),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accounting_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    p = result["phases_s"]
    b = result["baseline"]
    md = f"""# accounting_scale

{records:,} job usage records ({jobs_in_month:,} ending in {MONTH}) → APEL summaries; {ledger_rows:,} ledger rows
→ the month's cost-report views. DuckDB {duckdb.__version__}, {threads} threads, Python {platform.python_version()}.

| phase | seconds |
|---|---|
| generate usage (DuckDB SQL, columnar) | {p["generate_usage_s"]} |
| generate ledger | {p["generate_ledger_s"]} |
| APEL summary grouping (SQL, incl. fetching {len(groups):,} groups into Python) | {p["summary_sql_s"]} |
| summary + normalised messages (Python, {len(summaries)} + {len(normalised)} records) | {p["summary_messages_s"]} |
| sync counts (SQL) | {p["sync_sql_s"]} |
| **APEL total** | **{round(phases["apel_total_s"], 3)}** |
| **cost report, 9 views (SQL, one scan)** | **{p["cost_report_sql_s"]}** (one query per view: {p["cost_report_one_query_per_view_s"]}) |

Baseline (same run, first {b["rows"]:,} records): Python loop {b["python_loop_s"]} s vs DuckDB {b["duckdb_s"]} s
→ DuckDB is {b["python_over_duckdb"]}× faster (loop time excludes fetching the rows).
Load average when the run started: {LOAD_AT_START} on {os.cpu_count()} CPUs (shared machine).

Peak RSS {result["memory"]["peak_rss_mb"]} MB; message building peak (tracemalloc)
{result["memory"]["message_building_tracemalloc_peak_mb"]} MB.
"""
    (RESULTS / "accounting_scale.md").write_text(md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)

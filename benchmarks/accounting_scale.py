"""Benchmark: the operator's accounting path on 10,000,000 usage records, command by command.

    python -m benchmarks.accounting_scale [--records 10000000] [--baseline-records 1000000]
                                          [--resources 500] [--database-url URL]

Runs the commands an operator runs, each as its own process (wall time, CPU time and peak RSS
from wait4): `provisioner accounting import FILE` (JSON lines, with a few bad records that must be
refused one by one) → `accounting ledger --month` → `accounting publish --month` → `report cost
--month`. The baseline, measured in the same run on the first `--baseline-records` records, is the
import as it was before it read JSON lines with DuckDB's JSON reader (accounting/usage_file.py at
commit PREVIOUS_IMPORT, taken from git) against `accounting import` on that same file. CPU time
and wall time are reported apart, with the load average: on a shared machine both stretch with its load.
The usage file and the broker's fleet (resources whose hours make the ledger) are generated
first, untimed. Checks that the queued APEL summaries count exactly the good jobs of the month.
Writes benchmarks/results/accounting_scale.json and .md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from accounting.period import Month  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MONTH = Month(2026, 10)
BAD_EVERY = 100_003  # one record in this many has cores = 0 and must be refused

USAGE_SQL = """
COPY (
WITH r AS (
    SELECT i, hash(i) AS h1, hash(i + 1000000007) AS h2, hash(i * 31 + 7) AS h3 FROM range({n}) t(i)
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
    'slurm' AS backend,
    strftime(end_time - to_seconds(wall_seconds), '%Y-%m-%dT%H:%M:%SZ') AS start_time,
    strftime(end_time, '%Y-%m-%dT%H:%M:%SZ') AS end_time,
    wall_seconds,
    (wall_seconds * cores * 0.85)::BIGINT AS cpu_seconds,
    CASE WHEN i % {bad} = {bad} - 1 THEN 0 ELSE cores END AS cores,
    1 AS nodes,
    (ARRAY[12.5, 16.3, 24.8])[1 + ((h3 >> 16) % 3)::INT]::DOUBLE AS hs23_per_core,
    i::VARCHAR AS local_job_id
FROM c
) TO '{path}' (FORMAT JSON)
"""


def generate_usage(path: Path, n: int) -> tuple[int, int]:
    """Write `n` records as JSON lines; return (good jobs ending in MONTH, bad records)."""
    con = duckdb.connect()
    con.execute(USAGE_SQL.format(n=n, bad=BAD_EVERY, path=path))
    row = con.execute(
        f"""SELECT COUNT(*) FILTER (WHERE cores >= 1 AND end_time >= '2026-10-01' AND end_time < '2026-11-01'),
                   COUNT(*) FILTER (WHERE cores < 1)
            FROM read_json('{path}', format = 'newline_delimited',
                           columns = {{'cores': 'INTEGER', 'end_time': 'TIMESTAMP'}})"""
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def seed_fleet(url: str, resources: int) -> None:
    """The broker's own resources of the month (their hours are what the ledger prices)."""
    from sqlmodel import Session

    from provisioner.db import open_database
    from provisioner.model import ResourceRow

    engine = open_database(url)
    start = MONTH.start
    with Session(engine) as session:
        for i in range(resources):
            launched = start + timedelta(hours=(i * 37) % (29 * 24))
            spot = i % 3 == 0
            session.add(
                ResourceRow(
                    id=f"bench-{i:05d}",
                    backend="aws" if i % 2 else "gce",
                    offering_id=f"aws:us-east-1:m7i.2xlarge:{'spot' if spot else 'on_demand'}",
                    market="spot" if spot else "on_demand",
                    experiment=("atlas", "cms", "lhcb", "dune")[i % 4],
                    state="released",
                    idempotency_token=f"bench-{i:05d}",
                    price_micro_per_hour=120_000 if spot else 403_200,
                    cores=8,
                    hs23_per_core=16.3,
                    created_at=launched,
                    updated_at=launched,
                    state_since=launched,
                    launched_at=launched,
                    released_at=min(launched + timedelta(hours=6 + (i * 13) % 66), MONTH.end),
                )
            )
        session.commit()
    engine.dispose()


def run(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Run one command; its wall time, CPU time (user + system) and peak RSS (this process only)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in ok or (proc.returncode and b"Traceback" in err):
        raise RuntimeError(f"{args} exited {proc.returncode}:\n{out.decode()}\n{err.decode()}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": proc.returncode,
        "stdout_tail": out.decode()[-400:],
        "stderr_lines": len(err.decode().splitlines()),
    }


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from provisioner.cli import main; main()", *args]


# The import before it read JSON lines with DuckDB's JSON reader (each line parsed on its own, ~50
# checks built into a list for every record).
PREVIOUS_IMPORT = "a15d05d"
BASELINE = """
import importlib.util, sys
# `accounting import` as the operator runs it, with the previous accounting/usage_file.py in place
spec = importlib.util.spec_from_file_location("accounting.usage_file", sys.argv.pop(1))
previous = sys.modules["accounting.usage_file"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(previous)
from provisioner.cli import main
main()
"""


def queued_jobs(queue: Path) -> tuple[int, int]:
    """(NumberOfJobs in summary messages, in sync messages) of everything queued under `queue`."""
    summary = sync = 0
    for file in queue.rglob("*"):
        if not file.is_file():
            continue
        text = file.read_text(errors="replace")
        jobs = sum(
            int(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("NumberOfJobs:")
        )
        if text.startswith("APEL-summary-job-message"):
            summary += jobs
        elif text.startswith("APEL-sync-message"):
            sync += jobs
    return summary, sync


def main(
    records: int = typer.Option(10_000_000, help="usage records in the imported file"),
    baseline_records: int = typer.Option(1_000_000, help="records for the baseline (the previous import)"),
    resources: int = typer.Option(500, help="broker resources in the month (the ledger's input)"),
    database_url: str | None = typer.Option(None, help="default: SQLite in a fresh state directory"),
    work: Path | None = typer.Option(None, help="scratch directory (default: a temporary one)"),
) -> None:
    load_start = os.getloadavg()
    scratch = Path(work or tempfile.mkdtemp(prefix="accounting-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    usage = scratch / "usage.jsonl"
    t0 = time.perf_counter()
    good_in_month, bad = generate_usage(usage, records)
    generate_s = time.perf_counter() - t0
    base_file = scratch / "usage-baseline.jsonl"
    with usage.open("rb") as src, base_file.open("wb") as dst:
        for _, line in zip(range(baseline_records), src, strict=False):
            dst.write(line)

    def env_for(name: str) -> tuple[dict[str, str], str]:
        state = scratch / name
        url = database_url or f"sqlite:///{state / 'provisioner.db'}"
        env = os.environ | {"PYTHONPATH": str(REPO), "PROVISIONER_STATE_DIR": str(state)}
        env["PROVISIONER_DATABASE_URL"] = url
        state.mkdir(parents=True, exist_ok=True)
        return env, url

    if database_url is not None:
        reset_database(database_url)
    env, url = env_for("state")
    seed_fleet(url, resources)
    month = str(MONTH)
    steps = {
        "import": run(cli("accounting", "import", str(usage)), env, ok=(0, 1) if bad else (0,)),
        "ledger": run(cli("accounting", "ledger", "--month", month), env),
        "publish": run(
            cli(
                "accounting",
                "publish",
                "--month",
                month,
                "--queue",
                str(scratch / "outgoing"),
                "--kind",
                "summary",
                "--kind",
                "sync",
            ),
            env,
        ),
        "report": run(
            cli("report", "cost", "--month", month, "--format", "csv", "--out", str(scratch / "r")), env
        ),
    }
    summary_jobs, sync_jobs = queued_jobs(scratch / "outgoing")
    assert summary_jobs == sync_jobs == good_in_month, (summary_jobs, sync_jobs, good_in_month)

    # Baseline, same run: the previous import and this one, each as `accounting import` of the same
    # file into a fresh state directory.
    previous = scratch / "previous_usage_file.py"
    previous.write_bytes(
        subprocess.run(
            ["git", "-C", str(REPO), "show", f"{PREVIOUS_IMPORT}:accounting/usage_file.py"],
            check=True,
            capture_output=True,
        ).stdout
    )
    if database_url is not None:
        reset_database(database_url)
    base_env, _ = env_for("baseline")
    old = run(
        [sys.executable, "-c", BASELINE, str(previous), "accounting", "import", str(base_file)],
        base_env,
        ok=(0, 1),
    )
    if database_url is not None:
        reset_database(database_url)
    new_env, _ = env_for("baseline-new")
    new = run(cli("accounting", "import", str(base_file)), new_env, ok=(0, 1))
    load_end = os.getloadavg()

    total_wall = sum(s["wall_s"] for s in steps.values())
    result: dict[str, Any] = {
        "benchmark": "accounting_scale",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "duckdb": duckdb.__version__,
        },
        "database": "postgresql" if database_url else "sqlite",
        "load_average_1m": {"start": round(load_start[0], 2), "end": round(load_end[0], 2)},
        "records": records,
        "records_refused": bad,
        "good_jobs_in_month": good_in_month,
        "apel_summary_jobs": summary_jobs,
        "resources": resources,
        "usage_file_mb": round(usage.stat().st_size / 1e6, 1),
        "generate_s": round(generate_s, 1),
        "steps": steps,
        "total_wall_s": round(total_wall, 2),
        "total_cpu_s": round(sum(s["cpu_s"] for s in steps.values()), 2),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values()),
        "import_records_per_s": round(records / steps["import"]["wall_s"]),
        "baseline": {
            "records": baseline_records,
            "previous_import": {"commit": PREVIOUS_IMPORT, **old},
            "accounting_import": new,
            "speedup_wall": round(old["wall_s"] / new["wall_s"], 2),
            "speedup_cpu": round(old["cpu_s"] / new["cpu_s"], 2),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accounting_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| `{name}` | {s['wall_s']} | {s['cpu_s']} | {s['peak_rss_mb']} |" for name, s in steps.items()
    )
    b = result["baseline"]
    md = f"""# accounting_scale

The operator's path on {records:,} usage records ({result["usage_file_mb"]:,} MB of JSON lines, {bad} bad
records refused one by one) and {resources} broker resources; {result["database"]} database, DuckDB
{duckdb.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs shared with other work
(1-minute load average {result["load_average_1m"]["start"]} at the start, {result["load_average_1m"]["end"]} at the end:
both wall and CPU time stretch with it: the same 10M import took 125.5 s CPU at load 4.7 and
40.5 s at load 0.4, as the cores' caches and memory bandwidth are shared too).

| command (`provisioner …`) | wall s | CPU s | peak RSS MB |
|---|---|---|---|
{rows}

`accounting import` took {steps["import"]["cpu_s"]} s of CPU time and {steps["import"]["wall_s"]} s of wall time
({result["import_records_per_s"]:,} records/s of wall time); all four commands {result["total_cpu_s"]} s CPU,
{result["total_wall_s"]} s wall, at most {result["peak_rss_mb"]} MB resident. The queued
APEL summaries and sync records count {summary_jobs:,} jobs in {MONTH} = the good records of the month (checked).

Baseline, same run, first {baseline_records:,} records: the previous import (accounting/usage_file.py at
{PREVIOUS_IMPORT}) {b["previous_import"]["wall_s"]} s wall / {b["previous_import"]["cpu_s"]} s CPU / {b["previous_import"]["peak_rss_mb"]} MB;
`accounting import` {b["accounting_import"]["wall_s"]} s / {b["accounting_import"]["cpu_s"]} s / {b["accounting_import"]["peak_rss_mb"]} MB
→ {b["speedup_cpu"]}× less CPU time, {b["speedup_wall"]}× less wall time (the load moves the second).
"""
    (RESULTS / "accounting_scale.md").write_text(md)
    print(md)


def reset_database(url: str) -> None:
    """Drop and recreate the PostgreSQL database named in `url` (benchmark databases only)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    if not name.startswith("bench"):
        raise typer.BadParameter("the benchmark drops its database: give one whose name starts with 'bench'")
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    typer.run(main)

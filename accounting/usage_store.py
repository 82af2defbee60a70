"""The columnar store of imported batch-job usage: Parquet files per month, grouped for APEL with DuckDB.

`provisioner accounting import` writes the job, pilot and backfill records of a usage file here
(millions a month: one row each in a database table would take hours to insert and index); the
publish step reads each month's groups back in seconds. Layout: `<root>/month=YYYY-MM/<batch>.parquet`,
the month of the record's end time, one file per import and month. A record key lives in one file
only: an import that repeats keys rewrites the older files without them (the newer record wins),
so importing the same file twice changes nothing. One import at a time (a lock file in `root`).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from accounting.apel import JobGroup, SyncCount
from accounting.duplicates import UNIT_KINDS
from accounting.period import Month
from provisioner.domain import UsageRecord

# Columns of a stored record, in UsageRecord field names, with their DuckDB types.
COLUMNS: dict[str, str] = {
    "record_key": "VARCHAR",
    "kind": "VARCHAR",
    "experiment": "VARCHAR",
    "site": "VARCHAR",
    "submit_host": "VARCHAR",
    "backend": "VARCHAR",
    "start_time": "TIMESTAMPTZ",
    "end_time": "TIMESTAMPTZ",
    "wall_seconds": "BIGINT",
    "cpu_seconds": "BIGINT",
    "cores": "INTEGER",
    "nodes": "INTEGER",
    "memory_kb": "BIGINT",
    "gpu_model": "VARCHAR",
    "gpu_count": "INTEGER",
    "hs23_per_core": "DOUBLE",
    "resource_id": "VARCHAR",
    "local_job_id": "VARCHAR",
    "local_user": "VARCHAR",
    "fqan": "VARCHAR",
    "global_user_name": "VARCHAR",
    "offering_id": "VARCHAR",
    "offering_family": "VARCHAR",
    "market": "VARCHAR",
    "infrastructure": "VARCHAR",
    "status": "VARCHAR",
    "cloud_image_id": "VARCHAR",
    "cloud_type": "VARCHAR",
}
# zstd at level 1: about as small as the default level 3 (+10 %) for a fifth less CPU time to write.
STORED_FORMAT = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"
_MONTH_DIR = re.compile(r"^month=(\d{4}-\d{2})$")
_BATCH = re.compile(r"^batch-(\d+)")


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(row: tuple[object, ...]) -> UsageRecord:
    values: dict[str, Any] = dict(zip(COLUMNS, row, strict=True))
    values["start_time"] = _aware(values["start_time"])
    if values["end_time"] is not None:
        values["end_time"] = _aware(values["end_time"])
    return UsageRecord(**values)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class UsageStore:
    """Imported usage under `root`; DuckDB limited to `memory_limit` (it spills to `root/.tmp`)."""

    root: Path
    memory_limit: str = "512MB"
    threads: int | None = None

    @property
    def tmp(self) -> Path:
        return self.root / ".tmp"

    def connect(self) -> duckdb.DuckDBPyConnection:
        self.tmp.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{self.memory_limit}'")
        con.execute(f"SET temp_directory = {_quote(self.tmp / 'spill')}")
        if self.threads:
            con.execute(f"SET threads = {int(self.threads)}")
        return con

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's import lock (one writer at a time, across processes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- layout ----------------------------------------------------------------------------

    def month_dir(self, month: Month | str) -> Path:
        return self.root / f"month={month}"

    def files(self, month: Month | None = None) -> list[Path]:
        if month is not None:
            return sorted(self.month_dir(month).glob("*.parquet"))
        return sorted(self.root.glob("month=*/*.parquet"))

    def next_batch(self) -> int:
        numbers = [int(m.group(1)) for f in self.files() if (m := _BATCH.match(f.name))]
        return max(numbers, default=0) + 1

    def months(self) -> list[Month]:
        out = []
        for d in sorted(self.root.glob("month=*")):
            m = _MONTH_DIR.match(d.name)
            if m and any(d.glob("*.parquet")):
                out.append(Month.parse(m.group(1)))
        return out

    def _scan(
        self, month: Month, site: str | None, excluded: Collection[str] | None = None
    ) -> tuple[str, list[object]] | None:
        files = self.files(month)
        if not files:
            return None
        source = f"read_parquet([{', '.join(_quote(f) for f in files)}])"
        cond = "end_time >= ? AND end_time < ?"
        params: list[object] = [month.start, month.end]
        if site is not None:
            cond += " AND site = ?"
            params.append(site)
        if excluded:
            cond += " AND record_key NOT IN (SELECT unnest(?::VARCHAR[]))"
            params.append(sorted(excluded))
        return f"FROM {source} WHERE {cond}", params

    # ---- duplicates ------------------------------------------------------------------------

    def same_job_candidates(
        self, month: Month, *, site: str | None = None, others: Sequence[UsageRecord] = ()
    ) -> list[UsageRecord]:
        """The month's stored records that may be the same job as another record: their job id
        (site, local_job_id) or, for VMs, pilots and backfill, their unit (site, resource_id) occurs
        more than once among the month's stored records and `others` (the database's). Few, so
        `duplicates.same_job_other_key` can compare their times in Python."""
        scan = self._scan(month, site)
        if scan is None:
            return []
        body, params = scan
        units = ", ".join(f"'{k}'" for k in sorted(UNIT_KINDS))
        ids = [("job", r.site, r.local_job_id) for r in others if r.local_job_id]
        ids += [("unit", r.site, r.resource_id) for r in others if r.resource_id and r.kind in UNIT_KINDS]
        with self.connect() as con:
            con.execute("CREATE TEMP TABLE other_ids (what VARCHAR, site VARCHAR, ident VARCHAR)")
            if ids:
                con.executemany("INSERT INTO other_ids VALUES (?, ?, ?)", ids)
            # Grouped on a 64-bit hash of each id, not the text: a month of millions of job ids fits
            # in memory; a collision only adds a candidate, which the comparison of times leaves out.
            rows = con.execute(
                f"""WITH ids AS (
                        SELECT hash('job', site, local_job_id) AS h {body} AND local_job_id <> ''
                        UNION ALL
                        SELECT hash('unit', site, resource_id) {body} AND resource_id <> '' AND kind IN ({units})
                        UNION ALL SELECT hash(what, site, ident) FROM other_ids),
                    dup AS (SELECT h FROM ids GROUP BY h HAVING COUNT(*) > 1)
                    SELECT {", ".join(COLUMNS)} {body} AND (
                        (local_job_id <> '' AND hash('job', site, local_job_id) IN (SELECT h FROM dup))
                        OR (kind IN ({units}) AND resource_id <> ''
                            AND hash('unit', site, resource_id) IN (SELECT h FROM dup)))
                    ORDER BY record_key""",
                params * 3,
            ).fetchall()
        return [_record(row) for row in rows]

    # ---- what publishing reads -------------------------------------------------------------

    def job_groups(
        self, month: Month, *, site: str | None = None, excluded: Collection[str] | None = None
    ) -> list[JobGroup]:
        """Jobs that ended in `month`, grouped on every APEL summary key (as `summaries.job_groups`);
        `excluded` record keys left out (the second copy of a job stored twice)."""
        scan = self._scan(month, site, excluded)
        if scan is None:
            return []
        body, params = scan
        with self.connect() as con:
            rows = con.execute(
                f"""
                SELECT site, experiment, fqan, global_user_name, submit_host, hs23_per_core, nodes, cores,
                       SUM(wall_seconds), COALESCE(SUM(cpu_seconds), 0), COUNT(*), MIN(end_time), MAX(end_time)
                {body}
                GROUP BY site, experiment, fqan, global_user_name, submit_host, hs23_per_core, nodes, cores
                """,
                params,
            ).fetchall()
        return [
            JobGroup(r[0], r[1], r[2], r[3], r[4], float(r[5]), int(r[6]), int(r[7]), int(r[8]), int(r[9]),
                     int(r[10]), _aware(r[11]), _aware(r[12]))
            for r in rows
        ]  # fmt: skip

    def sync_counts(
        self, month: Month, *, site: str | None = None, excluded: Collection[str] | None = None
    ) -> list[SyncCount]:
        scan = self._scan(month, site, excluded)
        if scan is None:
            return []
        body, params = scan
        with self.connect() as con:
            rows = con.execute(
                f"SELECT site, submit_host, COUNT(*) {body} GROUP BY site, submit_host ORDER BY site, submit_host",
                params,
            ).fetchall()
        return [SyncCount(s, h, month.year, month.month, int(n)) for s, h, n in rows]

    def job_records(
        self, month: Month, *, site: str | None = None, excluded: Collection[str] | None = None
    ) -> list[UsageRecord]:
        """Every record of the month as a UsageRecord (for individual job messages: keep months small)."""
        scan = self._scan(month, site, excluded)
        if scan is None:
            return []
        body, params = scan
        with self.connect() as con:
            rows = con.execute(f"SELECT {', '.join(COLUMNS)} {body} ORDER BY record_key", params).fetchall()
        return [_record(row) for row in rows]

    def count(self, month: Month | None = None) -> int:
        files = self.files(month)
        if not files:
            return 0
        with self.connect() as con:
            row = con.execute(
                f"SELECT COUNT(*) FROM read_parquet([{', '.join(_quote(f) for f in files)}])"
            ).fetchone()
        return int(row[0]) if row else 0

    # ---- what importing writes -------------------------------------------------------------

    def replace_batch(
        self,
        con: duckdb.DuckDBPyConnection,
        relation: str,
        new_keys: str,
        *,
        months: Sequence[Month] | None = None,
        before_rename: Callable[[], None] | None = None,
    ) -> int:
        """Store the rows of `relation` (the COLUMNS) as a new batch, after removing the keys in
        table `new_keys` from older files. `months`: those the rows may end in, when the caller
        knows them (a superset: a month without rows gets no file). `before_rename`: called once
        every file is written, right before the first rename (the caller's database commit of the
        rows these keys replace: a crash after it leaves keys missing, never in both places).
        Returns the number of older records replaced."""
        batch = self.next_batch()
        work = self.tmp / f"batch-{batch:08d}"
        work.mkdir(parents=True, exist_ok=True)
        # Everything is written under `work` first; whatever happens, nothing half-written stays.
        try:
            old = self.files()
            rewrites: list[tuple[Path, Path]] = []
            replaced = 0
            if old:
                listed = ", ".join(_quote(f) for f in old)
                hits = con.execute(
                    f"SELECT filename, COUNT(*) FROM read_parquet([{listed}], filename = true) "
                    f"WHERE record_key IN (SELECT record_key FROM {new_keys}) GROUP BY filename"
                ).fetchall()
                for i, (name, n) in enumerate(hits):
                    replaced += int(n)
                    target = Path(name)
                    out = work / f"rewrite-{i}.parquet"
                    con.execute(
                        f"COPY (SELECT * FROM read_parquet({_quote(target)}) "
                        f"WHERE record_key NOT IN (SELECT record_key FROM {new_keys})) "
                        f"TO {_quote(out)} ({STORED_FORMAT})"
                    )
                    rewrites.append((out, target))
            cols = ", ".join(COLUMNS)
            if months is None:
                months = [
                    Month.parse(m)
                    for (m,) in con.execute(
                        f"SELECT DISTINCT strftime(end_time, '%Y-%m') FROM {relation} ORDER BY 1"
                    ).fetchall()
                ]
            staged: list[tuple[Path, Path]] = []
            for month in months:  # one pass per month: a partitioned COPY buffers every month at once
                out = work / f"{month}.parquet"
                written = con.execute(
                    f"COPY (SELECT {cols} FROM {relation} WHERE end_time >= ? AND end_time < ?) TO {_quote(out)} "
                    f"({STORED_FORMAT})",
                    [month.start, month.end],
                ).fetchone()
                if written is not None and int(written[0]) == 0:
                    continue  # every record of that month was held back: no empty file
                staged.append((out, self.month_dir(month) / f"batch-{batch:08d}.parquet"))
            # The caller's other copies of these keys go first (its commit), then older files lose
            # the replaced keys, then the new batch appears: a crash in between leaves those keys
            # missing until the same import is run again (never counted twice).
            if before_rename is not None:
                before_rename()
            for src, dst in rewrites:
                os.replace(src, dst)
            for src, dst in staged:
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return replaced

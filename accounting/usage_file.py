"""Importing a usage file at scale: DuckDB streams it, checks every record in SQL, refuses bad ones one by one.

The file (JSON lines, a JSON array, CSV with a header, or Parquet) is read column by column, never
as Python objects, with every value first as text so a wrong type is a refusal of that record
naming the column, not a failed import. The checks are those of `usage.validate_record`. Good
batch-job records (job, pilot, backfill) go to the columnar `UsageStore`; VM records, few and
updated while they run, go to the database through `usage.import_records`. A record whose key the
database already holds is replaced (the newer import wins), as everywhere else.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from sqlalchemy import delete, select
from sqlmodel import Session

from accounting.benchmark import MAX_HS23_PER_CORE, MIN_HS23_PER_CORE
from accounting.summaries import JOB_KINDS
from accounting.usage import (
    CPU_OVER_WALL_FACTOR,
    CPU_OVER_WALL_SLACK_S,
    FUTURE_LIMIT,
    KINDS,
    USAGE,
    WALL_SLACK_S,
    UsageProblem,
    import_records,
)
from accounting.usage_store import COLUMNS, UsageStore, _aware, _quote
from provisioner.domain import UsageRecord

REQUIRED = ("record_key", "kind", "experiment", "site", "submit_host", "backend", "start_time",
            "wall_seconds", "cores")  # fmt: skip
# cpu_seconds may be absent or null: CPU time unknown (as `validate_record` accepts it), summed as 0.
DEFAULTS = {"nodes": "1", "gpu_count": "0", "status": "'completed'"}
LISTED_PROBLEMS = 1000  # refusals returned one by one; the rest are counted


class UsageFileError(ValueError):
    """The file as a whole cannot be read (not JSON/CSV/Parquet, or a syntax error)."""


@dataclass(slots=True)
class FileImport:
    read: int = 0  # records in the file
    stored: int = 0  # batch-job records written to the columnar store
    vms: int = 0  # VM records written to the database
    refused: int = 0  # records with at least one problem (none of them stored)
    replaced: int = 0  # older records (store or database) this import replaced by key
    repeated: int = 0  # records whose key came again later in the same file (the last one wins)
    problems: list[UsageProblem] = field(default_factory=list)  # the first LISTED_PROBLEMS refusals

    @property
    def imported(self) -> int:
        return self.stored + self.vms


MAX_TEXT = 1024  # longer text in one field is a broken record, as `usage_text` holds too
MAX_INT = 10**15  # beyond any real count of seconds, cores or kB
EPOCH_RANGE = (0, 32503680000)  # epoch seconds 1970..3000
JSON_LINES = "json_lines"


def _source(path: Path) -> tuple[str, str]:
    """A DuckDB table expression yielding `record_no` and every column of COLUMNS as text, and how
    the records are numbered in messages ("line" or "record")."""
    suffix = path.suffix.lower()
    p = _quote(path)
    numbered = "row_number() OVER () AS record_no"
    if suffix == ".parquet":
        return f"(SELECT {numbered}, * FROM read_parquet({p}, union_by_name = true))", "record"
    if suffix == ".csv":
        # a data record's line is its number + 1 (the header)
        return (
            f"(SELECT row_number() OVER () + 1 AS record_no, * "
            f"FROM read_csv({p}, header = true, all_varchar = true, union_by_name = true))",
            "line",
        )
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):
        cols = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS) + "}"
        return f"(SELECT {numbered}, * FROM read_json({p}, format = 'array', columns = {cols}))", "record"
    return JSON_LINES, "line"


def _json_lines(path: Path) -> str:
    """JSON lines one text line at a time, so a line that is not a JSON object is refused on its own;
    `r_json` says why, `r_extra` lists keys that are no usage record field."""
    struct = "{" + ", ".join(f'"{c}": "VARCHAR"' for c in COLUMNS) + "}"
    known = ", ".join(f"'{c}'" for c in COLUMNS)
    return f"""(
        SELECT record_no,
               CASE WHEN j IS NULL THEN CASE WHEN NOT json_valid(line) THEN 'not JSON'
                    ELSE 'expected a JSON object, got ' || lower(json_type(line)) END END AS r_json,
               CASE WHEN j IS NOT NULL THEN [k FOR k IN json_keys(line) IF NOT list_contains([{known}], k)]
                    END AS r_extra,
               j
        FROM (SELECT record_no, line,
                     CASE WHEN starts_with(ltrim(line), '{{') THEN TRY(json_transform(line, '{struct}')) END AS j
              FROM (SELECT row_number() OVER () AS record_no, line
                    FROM read_csv({_quote(path)}, columns = {{'line': 'VARCHAR'}}, delim = '\x01', quote = '',
                                  escape = '', header = false, auto_detect = false, strict_mode = false))
              WHERE line IS NOT NULL AND trim(line) <> '')
    )"""


def _present(con: duckdb.DuckDBPyConnection, source: str) -> set[str]:
    names = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    return names & set(COLUMNS)


_NUMBER = "'-?[0-9]+(\\.[0-9]+)?([eE][+-]?[0-9]+)?'"
_OFFSET = "'([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)$'"


def _time(col: str) -> str:
    """Text → TIMESTAMPTZ: ISO 8601 with an offset or Z, or epoch seconds 1970..3000; else NULL."""
    raw = f"r_{col}"
    return (
        f"CASE WHEN {raw} IS NULL THEN NULL "
        f"WHEN regexp_full_match({raw}, {_NUMBER}) THEN CASE WHEN TRY_CAST({raw} AS DOUBLE) "
        f"BETWEEN {EPOCH_RANGE[0]} AND {EPOCH_RANGE[1]} THEN to_timestamp(TRY_CAST({raw} AS DOUBLE)) END "
        f"WHEN regexp_matches({raw}, {_OFFSET}) THEN TRY_CAST({raw} AS TIMESTAMPTZ) "
        f"END"
    )


def _integer(col: str, kind: str) -> str:
    """Text → integer when it is one (7200 or 7200.0), within MAX_INT; 1.5, 1e30 or "eight" give NULL."""
    raw = f"r_{col}"
    return (
        f"CASE WHEN TRY_CAST({raw} AS DOUBLE) = TRY_CAST({raw} AS HUGEINT) "
        f"AND abs(TRY_CAST({raw} AS DOUBLE)) <= {MAX_INT} THEN TRY_CAST({raw} AS {kind}) END"
    )


def _typed(col: str, kind: str) -> str:
    if kind == "TIMESTAMPTZ":
        return _time(col)
    if kind == "VARCHAR":
        return f"r_{col}"
    value = _integer(col, kind) if kind in ("BIGINT", "INTEGER") else f"TRY_CAST(r_{col} AS {kind})"
    return f"COALESCE({value}, {DEFAULTS[col]})" if col in DEFAULTS else value


def _check(cond: str, name: str, problem: str) -> str:
    return f"CASE WHEN {cond} THEN {{'field': '{name}', 'problem': {problem}}} END"


def _text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _checks(known_vos: Collection[str] | None, now: datetime) -> list[str]:
    """One SQL expression per rule of `usage.validate_record`: a {field, problem} struct or NULL."""
    future = (now + FUTURE_LIMIT).astimezone(UTC).isoformat()
    out = []
    for col in REQUIRED:
        out.append(_check(f"r_{col} IS NULL OR r_{col} = ''", col, _text("missing")))
    for col, kind in COLUMNS.items():
        given = f"r_{col} IS NOT NULL AND r_{col} <> ''"
        if kind in ("BIGINT", "INTEGER"):
            out.append(
                _check(
                    f"{given} AND ({_integer(col, kind)}) IS NULL",
                    col,
                    f"CASE WHEN abs(TRY_CAST(r_{col} AS DOUBLE)) > {MAX_INT} "
                    f"THEN r_{col} || ' is beyond any real record' ELSE 'not an integer: ' || r_{col} END",
                )
            )
        elif kind == "DOUBLE":
            out.append(
                _check(
                    f"{given} AND TRY_CAST(r_{col} AS DOUBLE) IS NULL", col, f"'not a number: ' || r_{col}"
                )
            )
        elif kind == "TIMESTAMPTZ":
            out.append(
                _check(
                    f"{given} AND {col} IS NULL",
                    col,
                    f"CASE WHEN regexp_full_match(r_{col}, {_NUMBER}) "
                    f"THEN 'epoch seconds ' || r_{col} || ' outside 1970..3000' "
                    f"WHEN regexp_matches(r_{col}, {_OFFSET}) THEN 'not a time: ' || r_{col} "
                    f"ELSE left(r_{col}, 80) || ' has no timezone (give UTC, e.g. ...Z)' END",
                )
            )
        else:
            out.append(
                _check(f"length(r_{col}) > {MAX_TEXT}", col, _text(f"longer than {MAX_TEXT} characters"))
            )
    kinds = ", ".join(_text(k) for k in sorted(KINDS))
    out.append(
        _check(
            f"kind IS NOT NULL AND kind <> '' AND kind NOT IN ({kinds})",
            "kind",
            "'unknown kind ' || kind || " + _text(f" (expected one of {sorted(KINDS)})"),
        )
    )
    if known_vos is not None:
        vos = ", ".join(_text(v) for v in sorted(known_vos))
        unknown = f"experiment NOT IN ({vos})" if vos else "TRUE"
        out.append(
            _check(
                f"experiment IS NOT NULL AND experiment <> '' AND {unknown}",
                "experiment",
                "'unknown VO ' || experiment",
            )
        )
    running_vm = "(kind = 'vm' AND status = 'started')"
    out += [
        _check(f"r_end_time IS NULL AND NOT {running_vm}", "end_time", _text("missing end time")),
        _check(
            "end_time < start_time",
            "end_time",
            "'end ' || end_time || ' before start ' || start_time",
        ),
        _check(
            f"end_time >= start_time AND wall_seconds > epoch(end_time) - epoch(start_time) + {WALL_SLACK_S}",
            "wall_seconds",
            "'wall ' || wall_seconds || ' s longer than end − start = ' "
            "|| (epoch(end_time) - epoch(start_time))::BIGINT || ' s'",
        ),
        _check(f"end_time > TIMESTAMPTZ '{future}'", "end_time", "'end ' || end_time || ' is in the future'"),
        _check("wall_seconds < 0", "wall_seconds", "'negative wall time ' || wall_seconds"),
        _check("cpu_seconds < 0", "cpu_seconds", "'negative CPU time ' || cpu_seconds"),
        _check("cores < 1", "cores", "'cores must be ≥ 1, got ' || cores"),
        _check("nodes < 1", "nodes", "'nodes must be ≥ 1, got ' || nodes"),
        _check(
            f"cores >= 1 AND wall_seconds >= 0 AND cpu_seconds > "
            f"wall_seconds * cores * {CPU_OVER_WALL_FACTOR} + {CPU_OVER_WALL_SLACK_S}",
            "cpu_seconds",
            f"'CPU ' || cpu_seconds || ' s exceeds wall × cores = ' || (wall_seconds * cores) "
            f"|| ' s by more than {round((CPU_OVER_WALL_FACTOR - 1) * 100)}%'",
        ),
        _check("gpu_count < 0", "gpu_count", "'negative GPU count ' || gpu_count"),
        _check(
            "gpu_count > 0 AND (gpu_model IS NULL OR gpu_model = '')",
            "gpu_model",
            _text("GPUs used but no GPU model"),
        ),
        _check(
            "r_hs23_per_core IS NULL",
            "hs23_per_core",
            _text("unknown benchmark (no HEPscore23 per core recorded)"),
        ),
        _check(
            f"isnan(hs23_per_core) OR hs23_per_core < {MIN_HS23_PER_CORE} OR hs23_per_core > {MAX_HS23_PER_CORE}",
            "hs23_per_core",
            f"'HEPscore23 per core ' || hs23_per_core || ' outside the plausible range "
            f"{MIN_HS23_PER_CORE}-{MAX_HS23_PER_CORE} (whole-node score or wrong unit?)'",
        ),
    ]
    return out


def stage_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    staged: Path,
    *,
    known_vos: Collection[str] | None,
    now: datetime,
) -> str:
    """Read `path` once and write every record, typed, with its list of problems, to Parquet `staged`.
    Returns how its records are numbered ("line" or "record")."""
    source, unit = _source(path)
    if source == JSON_LINES:
        source = _json_lines(path)
        raw = ", ".join(f"j.{c} AS r_{c}" for c in COLUMNS) + ", r_json, r_extra"
    else:
        try:
            present = _present(con, source)
        except duckdb.Error as exc:
            raise UsageFileError(f"{path}: cannot read usage records: {exc}") from exc
        raw = ", ".join(
            (f"CAST({c} AS VARCHAR) AS r_{c}" if c in present else f"NULL::VARCHAR AS r_{c}") for c in COLUMNS
        )
        raw += ", NULL::VARCHAR AS r_json, NULL::VARCHAR[] AS r_extra"
    typed = ", ".join(f"{_typed(c, k)} AS {c}" for c, k in COLUMNS.items())
    checks = ",\n".join(_checks(known_vos, now))
    query = f"""
        WITH raw AS (SELECT record_no, {raw} FROM {source}),
        typed AS (SELECT *, {typed} FROM raw)
        SELECT record_no, {", ".join(COLUMNS)},
               CASE WHEN r_json IS NOT NULL THEN [{{'field': CASE WHEN r_json = 'not JSON' THEN 'json'
                                                              ELSE 'record' END, 'problem': r_json}}]
                    ELSE [p FOR p IN [{checks}] IF p IS NOT NULL]
                         || [{{'field': k, 'problem': 'not a usage record field'}} FOR k IN COALESCE(r_extra, [])]
               END AS problems
        FROM typed
    """
    try:
        con.execute(f"COPY ({query}) TO {_quote(staged)} (FORMAT parquet, COMPRESSION zstd)")
    except duckdb.Error as exc:
        raise UsageFileError(f"{path}: cannot read usage records: {exc}") from exc
    return unit


def import_usage_file(
    session: Session,
    store: UsageStore,
    path: Path,
    *,
    known_vos: Collection[str] | None = None,
    now: datetime | None = None,
) -> FileImport:
    """Check every record of `path`, store the good ones (idempotent by record_key), list the refusals."""
    now = now or datetime.now(UTC)
    result = FileImport()
    with store.locked(), store.connect() as con:
        staged = store.tmp / "staged.parquet"
        unit = stage_file(con, path, staged, known_vos=known_vos, now=now)
        # From here on rows are identified by record_no: order no longer matters, and not keeping it
        # lets DuckDB write the partitions in bounded memory.
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"CREATE TEMP VIEW staged AS SELECT * FROM read_parquet({_quote(staged)})")
        read, refused = con.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE len(problems) > 0) FROM staged"
        ).fetchone() or (0, 0)
        result.read, result.refused = int(read), int(refused)
        for no, key, rid, name, problem in con.execute(
            f"""SELECT record_no, record_key, resource_id, p.field, p.problem
                FROM (SELECT record_no, record_key, resource_id, unnest(problems) AS p
                      FROM staged WHERE len(problems) > 0)
                ORDER BY record_no LIMIT {LISTED_PROBLEMS}"""
        ).fetchall():
            result.problems.append(UsageProblem(key or "", rid, name, problem, at=f"{unit} {no}"))
        # The last record of a key in the file wins, as in a database upsert.
        con.execute(
            "CREATE TEMP TABLE last_of_key AS SELECT record_key, max(record_no) AS keep, count(*) AS n "
            "FROM staged WHERE len(problems) = 0 GROUP BY record_key HAVING count(*) > 1"
        )
        result.repeated = int(
            (con.execute("SELECT COALESCE(SUM(n - 1), 0) FROM last_of_key").fetchone() or (0,))[0]
        )
        kinds = ", ".join(f"'{k}'" for k in JOB_KINDS)
        con.execute(
            """CREATE TEMP VIEW good AS SELECT s.* FROM staged s
                LEFT JOIN last_of_key d ON s.record_key = d.record_key
                WHERE len(s.problems) = 0 AND (d.keep IS NULL OR s.record_no = d.keep)"""
        )
        con.execute(f"CREATE TEMP VIEW good_jobs AS SELECT * FROM good WHERE kind IN ({kinds})")
        con.execute("CREATE TEMP VIEW new_keys AS SELECT record_key FROM good_jobs")
        result.replaced += _drop_database_keys(session, con)
        result.replaced += store.replace_batch(con, "good_jobs", "new_keys")
        result.stored = int((con.execute("SELECT COUNT(*) FROM new_keys").fetchone() or (0,))[0])
        vms = _vm_records(con)
        staged.unlink(missing_ok=True)
    if vms:
        done = import_records(session, vms, known_vos=known_vos, now=now)
        result.vms = done.imported
        result.problems.extend(done.problems)
        result.refused += len(done.problems)
    return result


def _drop_database_keys(session: Session, con: duckdb.DuckDBPyConnection) -> int:
    """Delete database usage rows whose key the store now holds (few: the broker's own are VMs and pilots)."""
    t = USAGE.c
    held = [k for (k,) in session.execute(select(t.record_key).where(t.kind.in_(JOB_KINDS)))]
    if not held:
        return 0
    con.execute("CREATE TEMP TABLE db_keys (record_key VARCHAR)")
    con.executemany("INSERT INTO db_keys VALUES (?)", [(k,) for k in held])
    clash = [
        k
        for (k,) in con.execute(
            "SELECT record_key FROM db_keys SEMI JOIN new_keys USING (record_key)"
        ).fetchall()
    ]
    for i in range(0, len(clash), 500):
        session.execute(delete(USAGE).where(t.record_key.in_(clash[i : i + 500])))
    session.commit()
    return len(clash)


def _vm_records(con: duckdb.DuckDBPyConnection) -> list[UsageRecord]:
    names = list(COLUMNS)
    rows = con.execute(f"SELECT {', '.join(names)} FROM good WHERE kind = 'vm' ORDER BY record_no").fetchall()
    out = []
    for row in rows:
        values = dict(zip(names, row, strict=True))
        values["start_time"] = _aware(values["start_time"])
        if values["end_time"] is not None:
            values["end_time"] = _aware(values["end_time"])
        out.append(UsageRecord(**values))
    return out

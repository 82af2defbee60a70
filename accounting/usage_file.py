"""Importing a usage file at scale: DuckDB streams it, checks every record in SQL, refuses bad ones one by one.

The file (JSON lines, a JSON array, CSV with a header, or Parquet) is read column by column, never
as Python objects, with every value first as text so a wrong type is a refusal of that record
naming the column, not a failed import. The checks are those of `usage.validate_record`. Good
batch-job records (job, pilot, backfill) go to the columnar `UsageStore`; VM records, few and
updated while they run, go to the database through `usage.import_records`. A record whose key the
database already holds is replaced (the newer import wins), as everywhere else, unless the held
record is finished and the new one has other figures (`duplicates.conflicts`): that is refused,
across imports and between two records of one file alike.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from sqlalchemy import delete, select
from sqlmodel import Session

from accounting.benchmark import MAX_HS23_PER_CORE, MIN_HS23_PER_CORE
from accounting.duplicates import COMPARED, CONFLICT, FINAL_STATUSES, Duplicate, conflicts
from accounting.period import Month
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
    load_records,
)
from accounting.usage_store import COLUMNS, UsageStore, _aware, _quote, _record
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
    # (a later record conflicting with the key's first finished one in the file is refused instead)
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
    # `...Z`, the form nearly every file uses, skips the two regular expressions (the same answer)
    return (
        f"CASE WHEN {raw} IS NULL THEN NULL "
        f"WHEN suffix({raw}, 'Z') THEN TRY_CAST({raw} AS TIMESTAMPTZ) "
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
    if kind == "VARCHAR":  # status only has a default: a record without one is completed, as a UsageRecord
        return f"COALESCE(r_{col}, {DEFAULTS[col]})" if col in DEFAULTS else f"r_{col}"
    value = _integer(col, kind) if kind in ("BIGINT", "INTEGER") else f"TRY_CAST(r_{col} AS {kind})"
    return f"COALESCE({value}, {DEFAULTS[col]})" if col in DEFAULTS else value


Check = tuple[str, str, str]  # (SQL condition that is true for a bad record, field, SQL problem text)


def _check(cond: str, name: str, problem: str) -> Check:
    return cond, name, problem


def _text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _checks(known_vos: Collection[str] | None, now: datetime) -> list[Check]:
    """One check per rule of `usage.validate_record`."""
    future = (now + FUTURE_LIMIT).astimezone(UTC).isoformat()
    out: list[Check] = []
    for col in REQUIRED:
        out.append(_check(f"r_{col} IS NULL OR r_{col} = ''", col, _text("missing")))
    for col, kind in COLUMNS.items():
        given = f"r_{col} IS NOT NULL AND r_{col} <> ''"
        if kind in ("BIGINT", "INTEGER"):
            out.append(
                _check(
                    # the typed column is that integer, unless a default stands in for it
                    f"{given} AND ({_integer(col, kind) if col in DEFAULTS else col}) IS NULL",
                    col,
                    f"CASE WHEN abs(TRY_CAST(r_{col} AS DOUBLE)) > {MAX_INT} "
                    f"THEN r_{col} || ' is beyond any real record' ELSE 'not an integer: ' || r_{col} END",
                )
            )
        elif kind == "DOUBLE":
            out.append(_check(f"{given} AND {col} IS NULL", col, f"'not a number: ' || r_{col}"))
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
                _check(
                    # bytes (known without reading the text) bound the characters: most skip counting
                    f"CASE WHEN strlen(r_{col}) > {MAX_TEXT} THEN length(r_{col}) > {MAX_TEXT} ELSE false END",
                    col,
                    _text(f"longer than {MAX_TEXT} characters"),
                )
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


def _known_keys_only(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[int, bool] | None:
    """For JSON lines: (records, whether every record is an object with usage record keys only), or
    None when some line is not JSON. DuckDB's JSON reader ignores unknown keys and stops at a bad
    line, so only a file that passes this may be read by it (`_fast_json_lines`)."""
    known = "[" + ", ".join(f"'{c}'" for c in COLUMNS) + "]"
    try:
        row = con.execute(
            # Valid JSON (the reader raises otherwise) that starts with "{" is an object: a text
            # test instead of json_type, which would parse every line a second time (~1 s a million).
            f"""SELECT COUNT(*), COUNT(*) FILTER (WHERE NOT starts_with(ltrim(json), '{{')
                                                  OR len([k FOR k IN json_keys(json)
                                                          IF NOT list_contains({known}, k)]) > 0)
                FROM read_ndjson_objects({_quote(path)})"""
        ).fetchone()
    except duckdb.Error:
        return None
    assert row is not None
    return int(row[0]), int(row[1]) == 0


def _line_count(path: Path) -> int:
    """Lines in the file (a last line without a newline counts)."""
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _fast_json_lines(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[str, bool] | None:
    """DuckDB's JSON reader over a well-formed JSON lines file (several times faster than parsing
    each line on its own): the source, and whether blank lines make record numbers differ from line
    numbers. None: the file needs the line-by-line reader, which refuses each broken line."""
    checked = _known_keys_only(con, path)
    if checked is None or not checked[1]:
        return None
    cols = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS) + "}"
    source = (
        f"(SELECT row_number() OVER () AS record_no, * FROM read_json({_quote(path)}, "
        f"format = 'newline_delimited', columns = {cols}))"
    )
    return source, _line_count(path) != checked[0]


def _line_numbers(con: duckdb.DuckDBPyConnection, path: Path, ordinals: list[int]) -> dict[int, int]:
    """Line number of each given non-blank line (1 = the first non-blank line)."""
    if not ordinals:
        return {}
    rows = con.execute(
        f"""SELECT ordinal, line_no FROM (
                SELECT line_no, row_number() OVER (ORDER BY line_no) AS ordinal FROM (
                    SELECT row_number() OVER () AS line_no, line
                    FROM read_csv({_quote(path)}, columns = {{'line': 'VARCHAR'}}, delim = '\x01', quote = '',
                                  escape = '', header = false, auto_detect = false, strict_mode = false))
                WHERE line IS NOT NULL AND trim(line) <> '')
            WHERE ordinal IN (SELECT unnest(?::BIGINT[]))""",
        [ordinals],
    ).fetchall()
    return {int(o): int(n) for o, n in rows}


@dataclass(frozen=True, slots=True)
class Staged:
    unit: str  # records are numbered by "line" or "record"
    blank_lines: Path | None = None  # the JSON lines file whose record numbers skip blank lines

    def where(self, con: duckdb.DuckDBPyConnection, numbers: list[int]) -> dict[int, str]:
        """Record number → "line 12" / "record 3" for messages."""
        lines = _line_numbers(con, self.blank_lines, numbers) if self.blank_lines else {}
        return {n: f"{self.unit} {lines.get(n, n)}" for n in numbers}


def stage_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    staged: Path,
    *,
    known_vos: Collection[str] | None,
    now: datetime,
) -> Staged:
    """Read `path` once and write every record, typed, with `ok` and its list of problems (NULL when
    ok), to Parquet `staged`."""
    source, unit = _source(path)
    blank_lines = None
    if source == JSON_LINES:
        fast = _fast_json_lines(con, path)
        if fast is not None:
            source, has_blank = fast
            blank_lines = path if has_blank else None
            raw = ", ".join(f"{c} AS r_{c}" for c in COLUMNS)
            raw += ", NULL::VARCHAR AS r_json, NULL::VARCHAR[] AS r_extra"
        else:
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
    checks = _checks(known_vos, now)
    # One boolean per record first; the list of problems is built only for the few bad records
    # (building ~50 structs per record was most of the import's time).
    bad = " OR ".join(f"COALESCE(({cond}), false)" for cond, _, _ in checks)
    listed = ",\n".join(f"CASE WHEN {cond} THEN {{'field': '{name}', 'problem': {text}}} END"
                        for cond, name, text in checks)  # fmt: skip
    query = f"""
        WITH raw AS (SELECT record_no, {raw} FROM {source}),
        typed AS (SELECT *, {typed} FROM raw),
        judged AS (SELECT *, r_json IS NULL AND len(COALESCE(r_extra, [])) = 0 AND NOT ({bad}) AS ok FROM typed)
        SELECT record_no, {", ".join(COLUMNS)}, ok,
               CASE WHEN ok THEN NULL
                    WHEN r_json IS NOT NULL THEN [{{'field': CASE WHEN r_json = 'not JSON' THEN 'json'
                                                              ELSE 'record' END, 'problem': r_json}}]
                    ELSE [p FOR p IN [{listed}] IF p IS NOT NULL]
                         || [{{'field': k, 'problem': 'not a usage record field'}} FOR k IN COALESCE(r_extra, [])]
               END AS problems
        FROM judged
    """
    try:
        con.execute(f"COPY ({query}) TO {_quote(staged)} (FORMAT parquet, COMPRESSION snappy)")
    except duckdb.Error as exc:
        if blank_lines is not None or "read_json(" in source:  # the fast reader balked: line by line
            return _stage_line_by_line(con, path, staged, query, source, raw)
        raise UsageFileError(f"{path}: cannot read usage records: {exc}") from exc
    return Staged(unit, blank_lines)


def _stage_line_by_line(
    con: duckdb.DuckDBPyConnection, path: Path, staged: Path, query: str, source: str, raw: str
) -> Staged:
    slow_raw = ", ".join(f"j.{c} AS r_{c}" for c in COLUMNS) + ", r_json, r_extra"
    query = query.replace(source, _json_lines(path)).replace(raw, slow_raw)
    try:
        con.execute(f"COPY ({query}) TO {_quote(staged)} (FORMAT parquet, COMPRESSION snappy)")
    except duckdb.Error as exc:
        raise UsageFileError(f"{path}: cannot read usage records: {exc}") from exc
    return Staged("line")


def import_usage_file(
    session: Session,
    store: UsageStore,
    path: Path,
    *,
    known_vos: Collection[str] | None = None,
    now: datetime | None = None,
) -> FileImport:
    """Check every record of `path`, store the good ones (idempotent by record_key), list the refusals.

    A record whose key holds a finished record with other figures (in the store or the database)
    is refused, naming both sources; the stored one stays (`duplicates.conflicts`). So is a record
    whose key came earlier in the file as a finished record with other figures: both lines are
    named and the first finished one is kept. Nothing is half-written: the store's new files appear
    by rename once complete, and the database rows the store replaces are deleted in a transaction
    committed right before those renames, so a crash in between leaves the keys missing until the
    same import is run again, never counted twice (in the database and the store).
    """
    now = now or datetime.now(UTC)
    result = FileImport()
    with store.locked(), store.connect() as con:
        staged_path = store.tmp / "staged.parquet"
        try:
            vms = _import_staged(session, store, con, path, staged_path, result, known_vos=known_vos, now=now)
        except BaseException:
            session.rollback()
            raise
        finally:
            staged_path.unlink(missing_ok=True)
    if vms:
        done = import_records(session, vms, known_vos=known_vos, now=now)
        result.vms = done.imported
        result.problems.extend(done.problems)
        result.refused += len(done.problems)
    return result


def _import_staged(
    session: Session,
    store: UsageStore,
    con: duckdb.DuckDBPyConnection,
    path: Path,
    staged_path: Path,
    result: FileImport,
    *,
    known_vos: Collection[str] | None,
    now: datetime,
) -> list[UsageRecord]:
    """Stage the file, list its refusals, store its job records; its good VM records (for the database)."""
    staged = stage_file(con, path, staged_path, known_vos=known_vos, now=now)
    # From here on rows are identified by record_no: order no longer matters, and not keeping it
    # lets DuckDB write the partitions in bounded memory.
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"CREATE TEMP VIEW staged AS SELECT * FROM read_parquet({_quote(staged_path)})")
    kinds = ", ".join(f"'{k}'" for k in JOB_KINDS)
    # The months the good job records may fill, found in the same scan as the counts (the store
    # would otherwise scan again for them).
    read, refused, months = con.execute(
        f"""SELECT COUNT(*), COUNT(*) FILTER (WHERE NOT ok),
                   list(DISTINCT strftime(end_time, '%Y-%m')) FILTER (WHERE ok AND kind IN ({kinds}))
            FROM staged"""
    ).fetchone() or (0, 0, [])
    result.read, result.refused = int(read), int(refused)
    listed = con.execute(
        f"""SELECT record_no, record_key, resource_id, p.field, p.problem
            FROM (SELECT record_no, record_key, resource_id, unnest(problems) AS p FROM staged WHERE NOT ok)
            ORDER BY record_no LIMIT {LISTED_PROBLEMS}"""
    ).fetchall()
    where = staged.where(con, sorted({int(r[0]) for r in listed}))
    for no, key, rid, name, problem in listed:
        result.problems.append(UsageProblem(key or "", rid, name, problem, at=where[int(no)]))
    result.repeated, in_file, listed_in_file = _repeats(con, staged)
    con.execute(
        """CREATE TEMP VIEW good AS SELECT s.* FROM staged s
            LEFT JOIN last_of_key d ON s.record_key = d.record_key
            WHERE s.ok AND (d.keep IS NULL OR s.record_no = d.keep)"""
    )
    con.execute(f"CREATE TEMP VIEW good_jobs AS SELECT * FROM good WHERE kind IN ({kinds})")
    # Records refused for clashing with a finished stored record, and keys whose stored copy goes.
    con.execute("CREATE TEMP TABLE held_back (record_no BIGINT)")
    con.execute("CREATE TEMP TABLE drop_keys (record_key VARCHAR)")
    in_database, result.replaced = _database_clashes(session, con)
    clashes = _store_clashes(con, store) + in_database
    result.refused += len(clashes) + in_file
    clashes = sorted(clashes + listed_in_file, key=lambda c: c[0])[:LISTED_PROBLEMS]
    if clashes:
        where = staged.where(con, [no for no, _ in clashes])
        for no, dup in clashes:
            result.problems.append(UsageProblem(dup.second_key, None, "record_key", str(dup), at=where[no]))
    con.execute("CREATE TEMP VIEW to_store AS SELECT * FROM good_jobs ANTI JOIN held_back USING (record_no)")
    result.stored = int((con.execute("SELECT COUNT(*) FROM to_store").fetchone() or (0,))[0])
    # The database rows the store now replaces (deleted in `_database_clashes`) go in a commit right
    # before the store's renames: a crash between the two leaves keys missing, not counted twice.
    result.replaced += store.replace_batch(
        con,
        "to_store",
        "drop_keys",
        months=[Month.parse(m) for m in sorted(months or [])],
        before_rename=session.commit,
    )
    return _records(con, "SELECT {cols} FROM good WHERE kind = 'vm' ORDER BY record_no")


def _repeats(con: duckdb.DuckDBPyConnection, staged: Staged) -> tuple[int, int, list[tuple[int, Duplicate]]]:
    """Keys that come more than once among the file's good records: table `last_of_key` (record_key,
    keep: the record_no stored for it). As across imports, a record whose key came earlier in the
    file as a finished record (end time, status in FINAL_STATUSES) is refused when it differs from
    that first finished one in a COMPARED field; of the others the last one wins, as in a database
    upsert. Only the repeated keys' records are compared. Returns (records superseded by a later
    one, records refused, the first LISTED_PROBLEMS refusals: record_no and both occurrences)."""
    con.execute(
        "CREATE TEMP TABLE last_of_key AS SELECT record_key, max(record_no) AS keep, count(*) AS n "
        "FROM staged WHERE ok GROUP BY record_key HAVING count(*) > 1"
    )
    repeats = int((con.execute("SELECT COALESCE(SUM(n - 1), 0) FROM last_of_key").fetchone() or (0,))[0])
    if not repeats:
        return 0, 0, []
    final = ", ".join(f"'{s}'" for s in sorted(FINAL_STATUSES))
    con.execute(
        f"""CREATE TEMP TABLE repeat_rows AS
            SELECT record_no, record_key, {", ".join(COMPARED)},
                   min(CASE WHEN end_time IS NOT NULL AND status IN ({final}) THEN record_no END)
                       OVER (PARTITION BY record_key) AS first_final
            FROM staged SEMI JOIN last_of_key USING (record_key) WHERE ok"""
    )
    differ = " OR ".join(f"o.{c} IS DISTINCT FROM f.{c}" for c in COMPARED)
    con.execute(
        f"""CREATE TEMP TABLE file_conflict AS
            SELECT o.record_no, f.record_no AS first_no
            FROM repeat_rows o JOIN repeat_rows f ON f.record_no = o.first_final
            WHERE o.record_no > o.first_final AND ({differ})"""
    )
    refused = int((con.execute("SELECT COUNT(*) FROM file_conflict").fetchone() or (0,))[0])
    if not refused:
        return repeats, 0, []
    # The last record not refused wins: the first finished one when every later one conflicts.
    con.execute(
        """UPDATE last_of_key SET keep = k.keep
           FROM (SELECT record_key, max(record_no) AS keep FROM repeat_rows
                 ANTI JOIN file_conflict USING (record_no) GROUP BY record_key) k
           WHERE last_of_key.record_key = k.record_key"""
    )
    pairs = [
        (int(no), int(first))
        for no, first in con.execute(
            f"SELECT record_no, first_no FROM file_conflict ORDER BY record_no LIMIT {LISTED_PROBLEMS}"
        ).fetchall()
    ]
    numbers = sorted({n for pair in pairs for n in pair})
    records = {
        int(row[0]): _record(row[1:])
        for row in con.execute(
            f"SELECT record_no, {', '.join(COLUMNS)} FROM staged WHERE record_no IN (SELECT unnest(?::BIGINT[]))",
            [numbers],
        ).fetchall()
    }
    where = staged.where(con, numbers)
    listed = []
    for no, first_no in pairs:
        first, later = records[first_no], records[no]
        found = conflicts({first.record_key: first}, [later])[1]
        key = later.record_key
        dup = found[0] if found else Duplicate(CONFLICT, key, key, f"{key} [earlier]", f"{key} [later]")
        listed.append(
            (no, replace(dup, first=f"{where[first_no]}: {dup.first}", second=f"{where[no]}: {dup.second}"))
        )
    return repeats - refused, refused, listed


def _records(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None
) -> list[UsageRecord]:
    """Rows of COLUMNS (`{cols}` in `sql`) as UsageRecords."""
    names = list(COLUMNS)
    out = []
    for row in con.execute(sql.format(cols=", ".join(names)), params or []).fetchall():
        values = dict(zip(names, row, strict=True))
        values["start_time"] = _aware(values["start_time"])
        if values["end_time"] is not None:
            values["end_time"] = _aware(values["end_time"])
        out.append(UsageRecord(**values))
    return out


def _store_clashes(con: duckdb.DuckDBPyConnection, store: UsageStore) -> list[tuple[int, Duplicate]]:
    """Incoming job records whose key the store holds: a finished stored record with other figures
    is kept and the incoming one held back (returned, the first LISTED_PROBLEMS described; the rest
    with a generic description); otherwise the stored copy is dropped (the newer import wins)."""
    old = store.files()
    if not old:
        return []
    listed = ", ".join(_quote(f) for f in old)
    final = ", ".join(f"'{s}'" for s in sorted(FINAL_STATUSES))
    differ = " OR ".join(f"n.{c} IS DISTINCT FROM o.{c}" for c in COMPARED)
    con.execute(
        f"""CREATE TEMP TABLE store_clash AS
            SELECT n.record_no, n.record_key,
                   o.end_time IS NOT NULL AND o.status IN ({final}) AND ({differ}) AS conflict
            FROM good_jobs n JOIN read_parquet([{listed}]) o USING (record_key)"""
    )
    con.execute("INSERT INTO held_back SELECT record_no FROM store_clash WHERE conflict")
    con.execute("INSERT INTO drop_keys SELECT record_key FROM store_clash WHERE NOT conflict")
    rows = con.execute(
        "SELECT record_no, record_key FROM store_clash WHERE conflict ORDER BY record_no"
    ).fetchall()
    if not rows:
        return []
    shown = [str(k) for _, k in rows[:LISTED_PROBLEMS]]
    stored = {r.record_key: r for r in _records(
        con, f"SELECT {{cols}} FROM read_parquet([{listed}]) WHERE record_key IN (SELECT unnest(?::VARCHAR[]))",
        [shown])}  # fmt: skip
    incoming = {r.record_key: r for r in _records(
        con, "SELECT {cols} FROM good_jobs WHERE record_key IN (SELECT unnest(?::VARCHAR[]))", [shown])}  # fmt: skip
    out = []
    for no, key in rows:
        found = conflicts(stored, [incoming[key]])[1] if key in incoming and key in stored else []
        dup = found[0] if found else Duplicate(CONFLICT, key, key, f"{key} [stored]", f"{key} [this file]")
        out.append((int(no), dup))
    return out


def _database_clashes(
    session: Session, con: duckdb.DuckDBPyConnection
) -> tuple[list[tuple[int, Duplicate]], int]:
    """As `_store_clashes` for the database's job records (few: the broker's own pilots): a finished
    one with other figures is kept and the incoming record held back; the others are deleted (in the
    caller's transaction) as the store now holds their key. Returns the conflicts and how many rows go."""
    t = USAGE.c
    held = [k for (k,) in session.execute(select(t.record_key).where(t.kind.in_(JOB_KINDS)))]
    if not held:
        return [], 0
    con.execute("CREATE TEMP TABLE db_keys (record_key VARCHAR)")
    con.executemany("INSERT INTO db_keys VALUES (?)", [(k,) for k in held])
    incoming = _records(con, "SELECT {cols} FROM good_jobs SEMI JOIN db_keys USING (record_key)")
    numbers = dict(
        con.execute(
            "SELECT record_key, record_no FROM good_jobs SEMI JOIN db_keys USING (record_key)"
        ).fetchall()
    )
    stored = {r.record_key: r for i in range(0, len(incoming), 500)
              for r in load_records(session, [r.record_key for r in incoming[i : i + 500]])}  # fmt: skip
    writable, bad = conflicts(stored, incoming)
    out = [(int(numbers[d.second_key]), d) for d in bad]
    if out:
        con.executemany("INSERT INTO held_back VALUES (?)", [(no,) for no, _ in out])
    clash = [r.record_key for r in writable]
    for i in range(0, len(clash), 500):
        session.execute(delete(USAGE).where(t.record_key.in_(clash[i : i + 500])))
    return out, len(clash)

"""Reading usage records from JSON text in Python: each item becomes a `UsageRecord` or a
`UsageProblem` naming the record and the field, so one bad record never stops the others.

`accounting.usage_file` reads files in DuckDB; the lines DuckDB cannot parse as JSON (NaN,
Infinity, syntax errors) come here, so their refusals still name the field."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from accounting.usage import UsageProblem
from provisioner.domain import UsageRecord

MAX_INT = 10**15  # beyond any real count of seconds, cores or kB: a bigger number is a broken record
MAX_TEXT = 1024
EPOCH_LIMITS = (0.0, 32503680000.0)  # 1970 .. 3000, as epoch seconds

_HINTS = typing.get_type_hints(UsageRecord)
_FIELDS = {f.name: f for f in dataclasses.fields(UsageRecord)}
_Shape: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "UsageRecordIn",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=MAX_TEXT),
    **{
        name: (_HINTS[name], ... if f.default is dataclasses.MISSING else f.default)
        for name, f in _FIELDS.items()
    },
)


class _BadTime(ValueError):
    pass


def _time(value: Any) -> Any:
    """ISO 8601 with an offset, or epoch seconds → UTC datetime; anything else is left to validation."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or not EPOCH_LIMITS[0] <= value <= EPOCH_LIMITS[1]:
            raise _BadTime(f"epoch seconds {value!r} outside 1970..3000")
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _BadTime(f"{value[:80]!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise _BadTime(f"{value!r} has no timezone (give UTC, e.g. ...Z)")
        return parsed.astimezone(UTC)
    return value


def record_from(item: Any, where: str) -> UsageRecord | list[UsageProblem]:
    """One item of a usage file: the record, or every problem with it (named by key and field)."""
    if not isinstance(item, dict):
        return [UsageProblem(where, None, "record", f"expected a JSON object, got {type(item).__name__}")]
    key = item.get("record_key")
    name = key if isinstance(key, str) and key and len(key) <= MAX_TEXT else where
    resource = item.get("resource_id") if isinstance(item.get("resource_id"), str) else None
    problems: list[UsageProblem] = []
    values = dict(item)
    for field in ("start_time", "end_time"):
        try:
            values[field] = _time(values.get(field))
        except _BadTime as exc:
            problems.append(UsageProblem(name, resource, field, str(exc)))
            values.pop(field, None)
    try:
        shaped = _Shape.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "record"
            if not any(p.field == field for p in problems):
                problems.append(UsageProblem(name, resource, field, str(error["msg"])))
        return problems
    if problems:
        return problems
    record = UsageRecord(**shaped.model_dump())
    for field, value in dataclasses.asdict(record).items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            problems.append(UsageProblem(name, resource, field, f"{value} is beyond any real record"))
    return problems or record


def parse_usage_text(text: str) -> tuple[list[UsageRecord], list[UsageProblem]]:
    """All records of a usage file and the problems of those that are not records."""
    records: list[UsageRecord] = []
    problems: list[UsageProblem] = []
    items: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            return [], [UsageProblem("file", None, "json", f"not a JSON array: {exc}")]
        items = [
            (f"record {n}", item)
            for n, item in enumerate(loaded if isinstance(loaded, list) else [loaded], 1)
        ]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(
                    UsageProblem(f"line {n}", None, "json", f"not JSON: {exc.msg} at column {exc.colno}")
                )
    for where, item in items:
        out = record_from(item, where)
        if isinstance(out, UsageRecord):
            records.append(out)
        else:
            problems.extend(out)
    return records, problems

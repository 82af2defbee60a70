"""Reading a policy file: TOML text → validated `Policy`, or one `PolicyError` listing every problem."""

from __future__ import annotations

import difflib
import re
import tomllib
import types
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from policies.errors import PolicyError, PolicyProblem
from policies.schema import (
    FAMILY_PATTERN,
    LOCATION_PATTERN,
    NAME_PATTERN,
    AllocationPolicy,
    BackfillPool,
    Policy,
)
from policies.site import offering_id_for
from policies.toml_lines import KeyPath, key_lines, line_of

_NAME_MEANING = "a name of letters, digits, '_', '.' and '-' (no ':' or '/'), starting with a letter or digit"
_LOCATION_MEANING = 'a location "<provider>:<region>", e.g. "aws:us-east-1" or "site:desy"'
_FAMILY_MEANING = 'an offering family "<provider>:<family>", e.g. "aws:p5" or "gce:a2"'
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)$")


def load_policy(path: str | Path, *, today: date | None = None) -> Policy:
    """Read and validate the policy file at `path`; raise `PolicyError` naming every problem.

    `today`: the day relative dates (`"today+10d"`) count from; the caller reads it from its clock."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(file, None, "", f"cannot read the file: {exc}") from None
    return parse_policy(text, file, today=today)


def parse_policy(text: str, filename: str, *, today: date | None = None) -> Policy:
    """Validate policy `text` (TOML); `filename` is only used in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(text, filename, str(exc)) from None
    try:
        lines = key_lines(text)
    except Exception:  # a scanner slip must not hide the real problems; they are still named by key
        lines = {}
    try:
        policy = Policy.model_validate(raw, context={"today": today})
    except ValidationError as exc:
        errors = exc.errors()
        # a list whose item failed also reports "too short"; the item's own error is the useful one
        errors = [e for e in errors if e["type"] != "too_short" or not _has_deeper(e["loc"], errors)]
        problems = [_problem_from_pydantic(err, filename, lines) for err in errors]
        raise PolicyError.from_problems(problems) from None
    problems = [
        PolicyProblem(filename, line_of(lines, path), format_key_path(path), problem)
        for path, problem in [*_completeness_problems(policy, lines), *_consistency_problems(policy)]
    ]
    if problems:
        raise PolicyError.from_problems(problems)
    return policy


def format_key_path(path: KeyPath) -> str:
    """("facility", "quotas", "aws:p5") → 'facility.quotas."aws:p5"'; list indices as [i]."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE_KEY.match(part) else f'"{part}"'
            text += f".{key}" if text else key
    return text


def _has_deeper(loc: tuple[str | int, ...], errors: list[Any]) -> bool:
    return any(len(e["loc"]) > len(loc) and tuple(e["loc"][: len(loc)]) == tuple(loc) for e in errors)


def _syntax_error(text: str, filename: str, message: str) -> PolicyError:
    found = _TOML_POSITION.search(message)
    line = int(found.group(1)) if found else None
    problem = _TOML_POSITION.sub("", message)
    key = ""
    declared_twice = re.match(r"Cannot declare \((.*)\) twice", problem)
    if declared_twice:
        parts = tuple(re.findall(r"'([^']*)'", declared_twice.group(1)))
        key = format_key_path(parts)
        problem = f"duplicate name: [{key}] is declared twice (TOML syntax)"
    elif problem.startswith("Cannot overwrite a value") and line is not None:
        key = _key_on_line(text, line)
        problem = "duplicate key: this key is already set above (TOML syntax)"
    else:
        problem = f"TOML syntax: {problem}"
    return PolicyError(filename, line, key, problem)


def _key_on_line(text: str, line: int) -> str:
    """Best-effort key path of the `key = value` on `line`, prefixed by the table header above it."""
    source = text.splitlines()
    table = ""
    for above in reversed(source[: line - 1]):
        header = above.strip()
        if header.startswith("["):
            table = header.strip("[] ")
            break
    key = source[line - 1].split("=", 1)[0].strip() if line <= len(source) else ""
    return f"{table}.{key}" if table and key else key or table


def _problem_from_pydantic(err: Any, filename: str, lines: dict[KeyPath, int]) -> PolicyProblem:
    loc: KeyPath = tuple(err["loc"])
    bad_name = bool(loc) and loc[-1] == "[key]"
    if bad_name:
        loc = loc[:-1]
    kind = err["type"]
    if kind == "extra_forbidden":
        unknown = str(loc[-1])
        problem = f"unknown key '{unknown}'"
        suggestion = _close_match(unknown, _keys_allowed_at(loc[:-1]))
        problem += f"; did you mean '{suggestion}'?" if suggestion else f"; allowed: {_list(loc[:-1])}"
    elif kind == "missing":
        problem = f"missing required key '{loc[-1]}'"
    elif kind == "string_pattern_mismatch":
        meaning = _pattern_meaning(str(err.get("ctx", {}).get("pattern")), loc)
        what = "name" if bad_name else "value"
        problem = f"invalid {what} {err['input']!r}: expected {meaning}"
    elif kind == "enum":
        problem = f"{err['input']!r} is not allowed: {err['msg'].removeprefix('Input should be ')}"
        expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        suggestion = _close_match(str(err["input"]), expected)
        if suggestion:
            problem += f"; did you mean '{suggestion}'?"
    else:
        problem = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        if isinstance(value, str | int | float | bool) and kind != "value_error":
            problem += f" (got {value!r})"
    return PolicyProblem(filename, line_of(lines, loc), format_key_path(loc), problem)


def _pattern_meaning(pattern: str, loc: KeyPath) -> str:
    if loc[:2] == ("facility", "quotas") and pattern == FAMILY_PATTERN:
        return _FAMILY_MEANING
    if pattern == NAME_PATTERN:
        return _NAME_MEANING
    if pattern == LOCATION_PATTERN or loc[-1:] == ("destination",):
        return (
            _LOCATION_MEANING + ' (or "*" for a destination)'
            if loc[-1:] == ("destination",)
            else _LOCATION_MEANING
        )
    return f"a value matching {pattern}"


def _close_match(word: str, candidates: list[str]) -> str | None:
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not found:  # a case slip ("Monthly") or a missing/extra underscore is still worth a hint
        folded = {c.lower().replace("_", ""): c for c in candidates}
        return folded.get(word.lower().replace("_", "").replace("-", ""))
    return found[0]


def _list(path: KeyPath) -> str:
    keys = _keys_allowed_at(path)
    return ", ".join(keys) if keys else "no keys here"


def _keys_allowed_at(path: KeyPath) -> list[str]:
    """The keys the table at `path` accepts, found by walking the model's type annotations."""
    annotation: Any = Policy
    for part in path:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        elif get_origin(annotation) in (tuple, list):
            annotation = get_args(annotation)[0]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and `| None` to reach the type that describes the value."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _completeness_problems(policy: Policy, lines: dict[KeyPath, int]) -> Iterator[tuple[KeyPath, str]]:
    """A policy fails closed: it must name who gets something, and must not be cut short."""
    if not policy.experiments:
        yield (
            ("experiments",),
            "no experiment is named: an experiment the policy does not name gets nothing, so this file"
            " would grant nothing; add at least one [experiments.<name>] table",
        )
    if policy.end is None:
        yield (
            ("end",),
            "the file does not end with the [end] table: it may be truncated (a half-finished save),"
            " so nothing of it is applied; add [end] as the last line once the file is complete",
        )
        return
    end_line = lines.get(("end",))
    after = sorted((line, path) for path, line in lines.items() if end_line is not None and line > end_line)
    if after:
        line, path = after[0]
        yield ("end",), f"[end] must be the last table; {format_key_path(path)} (line {line}) comes after it"


def _consistency_problems(policy: Policy) -> Iterator[tuple[KeyPath, str]]:
    """Problems that need more than one key to see: dates, duplicates, references."""
    seen_lower: dict[str, str] = {}
    for name, experiment in policy.experiments.items():
        other = seen_lower.setdefault(name.lower(), name)
        if other != name:
            yield ("experiments", name), f"duplicate name: '{name}' and '{other}' differ only in case"
        for key in ("backends", "markets", "archs"):
            if getattr(experiment, key) == ():
                yield ("experiments", name, key), "empty list allows nothing; omit the key to allow any"
        for index, dataset in enumerate(experiment.datasets):
            if dataset not in policy.facility.data_locations:
                hint = _close_match(dataset, list(policy.facility.data_locations))
                yield (
                    ("experiments", name, "datasets", index),
                    f"dataset '{dataset}' is not in [facility.data_locations]"
                    + (f"; did you mean '{hint}'?" if hint else ""),
                )

    routes: dict[tuple[str, str], int] = {}
    for index, route in enumerate(policy.facility.egress_routes):
        first = routes.setdefault((route.source, route.destination), index)
        if first != index:
            yield (
                ("facility", "egress_routes", index),
                f"duplicate route {route.source} → {route.destination} (also egress_routes[{first}])",
            )

    owners: dict[str, tuple[str, str]] = {}  # name or offering id -> (table, name) that claimed it
    sites: dict[str, Mapping[str, AllocationPolicy | BackfillPool]] = {
        "allocations": policy.allocations,
        "backfill": policy.backfill,
    }
    for table, entries in sites.items():
        for name, entry in entries.items():
            if name in owners and owners[name][0] != table:
                yield (table, name), f"duplicate name: '{name}' is also used in [{owners[name][0]}]"
            owners.setdefault(name, (table, name))
            node = entry.node
            if node.gpu_count > 0 and node.gpu_model is None:
                yield (table, name, "node", "gpu_count"), "gpu_count > 0 needs gpu_model"
            if node.gpu_model is not None and node.gpu_count == 0:
                yield (table, name, "node", "gpu_model"), "gpu_model is set but gpu_count is 0"
            market = "allocation" if table == "allocations" else "backfill"
            offering = offering_id_for(entry.backend, entry.partition, node.name, market)
            if offering in owners:
                yield (
                    (table, name, "node", "name"),
                    f"offering id {offering} is also produced by {owners[offering][0]}.{owners[offering][1]};"
                    " give the node shape a different name",
                )
            owners.setdefault(offering, (table, name))
    for name, allocation in policy.allocations.items():
        if allocation.ends <= allocation.starts:
            yield (
                ("allocations", name, "ends"),
                f"ends ({allocation.ends:%Y-%m-%d %H:%M}Z) is not after starts ({allocation.starts:%Y-%m-%d %H:%M}Z)",
            )

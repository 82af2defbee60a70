"""The key-path → line scanner agrees with where keys are written, whatever the TOML layout."""

from __future__ import annotations

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.toml_lines import KeyPath, key_lines, line_of

DOC = '''# comment with = and [brackets]
a = "value # not a comment"
[facility]
"q.k" = { m = 1, n = [1, { z = 2 }] }
text = """multi
line = still the string
[not.a.table]"""

[facility.quotas]
"aws:p5" = 0  # trailing comment

[[facility.routes]]
source = 'a'
tiers = [
  { up = 1 },
  { up = 2 },
]

[[facility.routes]]
dotted.key.path = 3
after = 4
'''


def test_every_written_key_maps_to_its_line() -> None:
    tomllib.loads(DOC)  # the scanner assumes valid TOML
    lines = key_lines(DOC)
    assert lines[("a",)] == 2
    assert lines[("facility", "q.k", "n", 1, "z")] == 4
    assert lines[("facility", "text")] == 5
    assert ("not", "a", "table") not in lines and ("facility", "line") not in lines
    assert lines[("facility", "quotas", "aws:p5")] == 10
    assert lines[("facility", "routes", 0, "tiers", 1, "up")] == 16
    assert lines[("facility", "routes", 1)] == 19
    assert lines[("facility", "routes", 1, "dotted", "key", "path")] == 20
    assert lines[("facility", "routes", 1, "after")] == 21


def test_a_missing_key_falls_back_to_its_nearest_written_parent() -> None:
    lines = key_lines(DOC)
    assert line_of(lines, ("facility", "quotas", "gce:a2")) == 9
    assert line_of(lines, ("nowhere",)) is None


def test_nested_arrays_of_tables_restart_their_index_per_parent_element() -> None:
    doc = "[[a]]\n[[a.b]]\nx = 1\n[[a.b]]\nx = 2\n[[a]]\n[[a.b]]\nx = 3\n"
    assert tomllib.loads(doc)["a"][1]["b"][0]["x"] == 3
    lines = key_lines(doc)
    assert lines[("a", 0, "b", 1, "x")] == 5
    assert lines[("a", 1, "b", 0, "x")] == 8


def test_the_scanner_stops_on_text_it_does_not_understand() -> None:
    for text in ('a = """never closed', "[a", "a = [1, }", "a = {b = ", "= = =", "[[x]]\n[[x.y"):
        key_lines(text)  # returns (whatever it found) instead of looping or raising


_keys = st.sampled_from(["a", "b-c", "d_1", '"q.k"', '"aws:p5"', "'lit'", '"sp ace"'])
_scalars = st.sampled_from(
    ["1", '"s # no comment"', "'x'", "2026-11-23", "true", '"""m\nl"""', "[1, 2]", "-0.5"]
)


def _unquote(key: str) -> str:
    return key[1:-1] if key[0] in "'\"" else key


@given(
    tables=st.dictionaries(
        _keys,
        st.dictionaries(_keys, st.one_of(_scalars, st.dictionaries(_keys, _scalars, max_size=3)), max_size=4),
        max_size=4,
    )
)
@settings(max_examples=200, deadline=None)
def test_generated_documents_map_every_key_to_the_line_it_was_written_on(
    tables: dict[str, dict[str, str | dict[str, str]]],
) -> None:
    out: list[str] = []  # chunks joined by newlines; a chunk may span lines (multi-line strings)
    expected: dict[KeyPath, int] = {}

    def next_line() -> int:
        return sum(chunk.count("\n") + 1 for chunk in out) + 1

    for table, entries in tables.items():
        expected[(_unquote(table),)] = next_line()
        out.append(f"[{table}]  # header")
        for key, value in entries.items():
            line = next_line()
            if isinstance(value, dict):
                written = f"{key} = {{ "
                for n, (k, v) in enumerate(value.items()):
                    written += ", " if n else ""
                    expected[(_unquote(table), _unquote(key), _unquote(k))] = line + written.count("\n")
                    written += f"{k} = {v}"
                out.append(written + " }")
            else:
                out.append(f"{key} = {value}")
            expected[(_unquote(table), _unquote(key))] = line
    text = "\n".join(out) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # keys differing only in quoting may collide; not this test's business
    lines = key_lines(text)
    for path, line in expected.items():
        assert lines[path] == line, (path, text)

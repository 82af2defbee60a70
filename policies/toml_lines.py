"""Where each key path of a (syntactically valid) TOML document is written: key path → 1-based line.

`tomllib` keeps no positions, so this scans the text once. Paths use the loaded document's shape:
table names and keys as strings, array (and array-of-tables) elements as ints, e.g.
("facility", "egress_routes", 0, "tiers", 1, "usd_per_gb").
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.lines: dict[KeyPath, int] = {}
        self._line_starts = [0] + [n + 1 for n, ch in enumerate(text) if ch == "\n"]
        self._array_tables: dict[tuple[str, ...], int] = {}  # [[name]] -> index of its current element

    def line_at(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def record(self, path: KeyPath, pos: int) -> None:
        self.lines.setdefault(path, self.line_at(pos))

    def peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, tabs, comments and (if asked) newlines."""
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.i += 1
            elif ch == "#":
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            else:
                return

    def scan(self) -> dict[KeyPath, int]:
        current: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.i >= len(self.s):
                return self.lines
            start = self.i
            if self.peek(2) == "[[":
                self.i += 2
                keys = self.dotted_key()
                self.skip_blank(newlines=False)
                self.i += 2  # ]]
                name = tuple(keys)
                index = self._array_tables.get(name, -1) + 1
                self._array_tables[name] = index
                # a new element of an outer array resets the inner arrays' counters
                for other in [k for k in self._array_tables if len(k) > len(name) and k[: len(name)] == name]:
                    del self._array_tables[other]
                table = self.resolve(keys[:-1])
                self.record((*table, keys[-1]), start)
                current = (*table, keys[-1], index)
                self.record(current, start)
            elif self.peek() == "[":
                self.i += 1
                keys = self.dotted_key()
                self.skip_blank(newlines=False)
                self.i += 1  # ]
                current = self.resolve(keys)
                for n in range(1, len(current) + 1):
                    self.record(current[:n], start)
            else:
                self.key_value(current)
            if self.i == start:  # never loop on input this scanner does not understand
                self.i += 1

    def resolve(self, keys: Sequence[str]) -> KeyPath:
        """Header keys → path, inserting the current index of every array of tables on the way."""
        path: list[str | int] = []
        for n, key in enumerate(keys):
            path.append(key)
            index = self._array_tables.get(tuple(keys[: n + 1]))
            if index is not None:
                path.append(index)
        return tuple(path)

    def key_value(self, table: KeyPath) -> None:
        start = self.i
        keys = self.dotted_key()
        for n in range(1, len(keys) + 1):
            self.record((*table, *keys[:n]), start)
        self.skip_blank(newlines=False)
        self.i += 1  # =
        self.skip_blank(newlines=False)
        self.value((*table, *keys))

    def dotted_key(self) -> list[str]:
        keys = []
        while True:
            self.skip_blank(newlines=False)
            keys.append(self.simple_key())
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return keys
            self.i += 1

    def simple_key(self) -> str:
        quote = self.peek()
        if quote in ("'", '"'):
            begin = self.i
            self.skip_string()
            raw = self.s[begin + 1 : self.i - 1]
            return raw.encode().decode("unicode_escape") if quote == '"' and "\\" in raw else raw
        begin = self.i
        while self.i < len(self.s) and self.s[self.i] in _BARE_KEY_CHARS:
            self.i += 1
        return self.s[begin : self.i]

    def skip_string(self) -> None:
        quote = self.s[self.i]
        if self.s.startswith(quote * 3, self.i):
            end = self.s.find(quote * 3, self.i + 3)
            while quote == '"' and end > 0 and _escaped(self.s, end):
                end = self.s.find(quote * 3, end + 1)
            self.i = len(self.s) if end < 0 else end + 3
            while self.peek() == quote:  # up to two quotes may close the content
                self.i += 1
            return
        self.i += 1
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "\\" and quote == '"':
                self.i += 2
                continue
            self.i += 1
            if ch == quote:
                return

    def value(self, path: KeyPath) -> None:
        ch = self.peek()
        if ch in ("'", '"'):
            self.skip_string()
        elif ch == "[":
            self.i += 1
            index = 0
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "]":
                    self.i += 1
                    return
                before = self.i
                self.record((*path, index), self.i)
                self.value((*path, index))
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.i += 1
                    index += 1
                elif self.i == before or self.i >= len(self.s):
                    return
        elif ch == "{":
            self.i += 1
            while True:
                self.skip_blank(newlines=False)
                if self.peek() == "}":
                    self.i += 1
                    return
                if self.peek() == ",":
                    self.i += 1
                    continue
                before = self.i
                self.key_value(path)
                if self.i == before or self.i >= len(self.s):
                    return
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]}\n#":
                self.i += 1


def _escaped(text: str, pos: int) -> bool:
    backslashes = 0
    while pos - backslashes - 1 >= 0 and text[pos - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path written in `text` (valid TOML) to the line it is written on."""
    return _Scanner(text).scan()


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """Line of `path`, or of its nearest written ancestor (a missing key: the table that lacks it)."""
    for n in range(len(path), 0, -1):
        found = lines.get(path[:n])
        if found is not None:
            return found
    return None

"""Slurm hostlist expressions (`cloud[1-3,5],vm`) expanded in Python, as `scontrol show hostnames` does."""

from __future__ import annotations

import re

_BRACKET = re.compile(r"^(.*?)\[([^\]]+)\](.*)$")


def _split_top_level(expr: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expr:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _expand_one(name: str) -> list[str]:
    match = _BRACKET.match(name)
    if not match:
        return [name]
    head, ranges, tail = match.groups()
    out: list[str] = []
    for item in ranges.split(","):
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"hostlist {name!r}: bad range {item!r}")
        width = len(low)
        for n in range(int(low), int(high or low) + 1):
            out.extend(f"{head}{n:0{width}d}{rest}" for rest in _expand_one(tail))
    return out


def expand_hostlist(expr: str) -> list[str]:
    """`cloud[1-2],vm` → ['cloud1', 'cloud2', 'vm']; zero padding is kept (`n[01-02]`)."""
    names: list[str] = []
    for part in _split_top_level(expr or ""):
        names.extend(_expand_one(part))
    return names

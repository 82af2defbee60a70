"""CLI commands: offerings (placeholder, to be written)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    del root

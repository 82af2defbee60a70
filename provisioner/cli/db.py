"""`provisioner db upgrade`: bring the database schema to the newest migration."""

from __future__ import annotations

import typer
from rich.console import Console

from provisioner.db import upgrade
from provisioner.settings import load_settings


def register(root: typer.Typer) -> None:
    db_app = typer.Typer(help="Database schema.", no_args_is_help=True)

    @db_app.command("upgrade")
    def upgrade_cmd() -> None:
        """Apply all Alembic migrations to the configured database."""
        url = load_settings().resolved_database_url()
        upgrade(url)
        Console().print("[green]schema is at the newest revision[/green]")

    root.add_typer(db_app, name="db")

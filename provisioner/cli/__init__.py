"""The `provisioner` command line: one typer app, each command group in its own module."""

from __future__ import annotations

import typer

from provisioner.cli import accounting, db, engine, offerings, policy, request, slurm

app = typer.Typer(
    name="provisioner",
    help="Provisioning broker: plans and provisions HPC, cloud and backfill capacity, and accounts for it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)

for module in (offerings, policy, request, engine, accounting, db, slurm):
    module.register(app)


def main() -> None:
    app()

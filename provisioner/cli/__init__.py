"""The `provisioner` command line: one typer app, each command group in its own module."""

from __future__ import annotations

import typer

from provisioner.cli import accounting, db, engine, offerings, policy, request, serve, slurm, worker
from provisioner.logs import configure_logging

app = typer.Typer(
    name="provisioner",
    help="Provisioning broker: plans and provisions HPC, cloud and backfill capacity, and accounts for it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)

for module in (offerings, policy, request, engine, serve, accounting, db, slurm, worker):
    module.register(app)


@app.callback()
def _setup(
    log_level: str = typer.Option(
        "WARNING", envvar="PROVISIONER_LOG_LEVEL", help="DEBUG, INFO, WARNING, ERROR"
    ),
    log_json: bool = typer.Option(False, envvar="PROVISIONER_LOG_JSON", help="logs as JSON lines on stderr"),
) -> None:
    configure_logging(log_level, json=log_json)


def main() -> None:
    app()

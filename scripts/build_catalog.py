"""Rebuild the bundled offerings catalog in `data/` from the shared raw tables.

python scripts/build_catalog.py [SHARED_DATA] [--out data]
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from provisioner.catalog_build import CatalogBuildError, build_catalog, write_catalog  # noqa: E402

cli = typer.Typer(add_completion=False)


@cli.command()
def main(
    shared: Path = typer.Argument(REPO.parent / "shared" / "data", help="the shared data directory"),
    out: Path = typer.Option(REPO / "data", "--out", help="where the bundled files go"),
) -> None:
    """Read SHARED/catalog, SHARED/benchmarks and SHARED/egress; write the bundled catalog into OUT."""
    try:
        built = build_catalog(shared)
    except CatalogBuildError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    for path in write_catalog(built, shared, out):
        typer.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    typer.echo(
        f"{len(built.rows):,} offerings, {len(built.families)} families, {len(built.egress)} egress tiers"
    )
    for note, count in sorted(built.notes.items()):
        typer.echo(f"  skipped {count:5d}: {note}")


if __name__ == "__main__":
    cli()

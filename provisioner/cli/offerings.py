"""CLI command `provisioner offerings`: search the bundled catalog and compare cost per HS23-hour."""

from __future__ import annotations

import csv
import enum
import json
import sys
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from provisioner.catalog import Catalog, CatalogError, load_catalog
from provisioner.domain import Arch, Market, Offering

MICRO = Decimal("0.000001")
RECORD_FIELDS = (
    "id",
    "provider",
    "region",
    "zone",
    "instance_type",
    "family",
    "market",
    "cores",
    "memory_gb",
    "arch",
    "gpu_model",
    "gpu_count",
    "price_per_hour",
    "usd_per_hs23_hour",
    "hs23_per_core",
    "interruption_rate_per_hour",
    "startup_seconds",
    "price_source",
    "benchmark_assumption",
)


class SortKey(enum.StrEnum):
    PRICE = "price"
    HS23_PRICE = "hs23-price"


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def cost_per_hs23_hour(offering: Offering) -> Decimal | None:
    """USD per HS23-hour of one unit; None when the offering has no benchmark."""
    hs23 = offering.hs23
    if hs23 <= 0:
        return None
    return (offering.price_per_hour / Decimal(repr(hs23))).quantize(MICRO, rounding=ROUND_HALF_EVEN)


def _pick(value: str | None, known: frozenset[str], option: str, fold: bool = False) -> str | None:
    """Check a free-text option against what the catalog holds; return the catalog's spelling."""
    if value is None:
        return None
    for candidate in known:
        if candidate == value or (fold and candidate.casefold() == value.casefold()):
            return candidate
    shown = ", ".join(sorted(known)[:12]) + (", ..." if len(known) > 12 else "")
    raise typer.BadParameter(f"{value!r} is not in the catalog (known: {shown})", param_hint=option)


def _price(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"{value!r} is not a number", param_hint="'--max-price'") from None
    if not price.is_finite() or price < 0:
        raise typer.BadParameter(
            f"{value!r} must be a non-negative amount in USD", param_hint="'--max-price'"
        )
    return price


def _record(catalog: Catalog, offering: Offering) -> dict[str, object]:
    per_hs23 = cost_per_hs23_hour(offering)
    return {
        "id": offering.id,
        "provider": offering.provider,
        "region": offering.region,
        "zone": offering.zone,
        "instance_type": offering.instance_type,
        "family": offering.family,
        "market": offering.market.value,
        "cores": offering.cores,
        "memory_gb": offering.memory_gb,
        "arch": offering.arch.value,
        "gpu_model": offering.gpu_model,
        "gpu_count": offering.gpu_count,
        "price_per_hour": str(offering.price_per_hour),
        "usd_per_hs23_hour": None if per_hs23 is None else str(per_hs23),
        "hs23_per_core": offering.hs23_per_core,
        "interruption_rate_per_hour": offering.interruption_rate_per_hour,
        "startup_seconds": offering.startup_seconds,
        "price_source": catalog.price_source(offering.id),
        "benchmark_assumption": offering.benchmark_assumption,
    }


def _table(offerings: list[Offering], matched: int, sort: SortKey) -> Table:
    table = Table(
        title=f"{matched:,} matching offerings",
        caption=f"showing {len(offerings):,}, cheapest {'per HS23-hour' if sort is SortKey.HS23_PRICE else 'per hour'} first",
    )
    for name, justify in (
        ("offering", "left"),
        ("cores", "right"),
        ("mem GB", "right"),
        ("arch", "left"),
        ("GPU", "left"),
        ("$/h", "right"),
        ("HS23/core", "right"),
        ("$/HS23-h", "right"),
        ("interrupt/h", "right"),
    ):
        # fold rather than truncate: a cut-off id or price is worse than a taller table
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for o in offerings:
        per_hs23 = cost_per_hs23_hour(o)
        table.add_row(
            o.id,
            str(o.cores),
            f"{o.memory_gb:g}",
            o.arch.value,
            f"{o.gpu_count}× {o.gpu_model}" if o.gpu_count else "",
            str(o.price_per_hour),
            f"{o.hs23_per_core:g}",
            "" if per_hs23 is None else str(per_hs23),
            f"{o.interruption_rate_per_hour:.2e}" if o.interruption_rate_per_hour else "",
        )
    return table


def offerings(
    arch: Arch | None = typer.Option(None, "--arch", help="CPU architecture"),
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="only with / without GPUs"),
    gpu_model: str | None = typer.Option(None, "--gpu-model", help="GPU model, e.g. A100, A100-80GB, L4"),
    region: str | None = typer.Option(None, "--region", help="region, e.g. us-east-1, europe-west4"),
    market: Market | None = typer.Option(None, "--market", help="on_demand or spot"),
    max_price: str | None = typer.Option(None, "--max-price", help="USD per unit-hour, inclusive"),
    provider: str | None = typer.Option(None, "--provider", help="aws or gce"),
    min_cores: int | None = typer.Option(None, "--min-cores", min=0, help="at least this many vCPUs"),
    min_memory_gb: float | None = typer.Option(
        None, "--min-memory-gb", min=0, help="at least this much memory"
    ),
    sort: SortKey = typer.Option(SortKey.PRICE, "--sort", help="order by price per hour or per HS23-hour"),
    limit: int = typer.Option(30, "--limit", min=0, help="rows to show; 0 shows all"),
    output: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", help="table, csv or json"),
    catalog_dir: Path | None = typer.Option(None, "--catalog", help="catalog directory (default: bundled)"),
) -> None:
    """List catalog offerings that match, cheapest first, with their cost per HS23-hour."""
    try:
        catalog = load_catalog(catalog_dir)
    except CatalogError as error:
        raise typer.BadParameter(str(error), param_hint="'--catalog'") from error
    matches = catalog.filter(
        arch=arch,
        gpu=gpu,
        gpu_model=_pick(gpu_model, catalog.gpu_models(), "'--gpu-model'", fold=True),
        region=_pick(region, catalog.regions(), "'--region'"),
        market=market,
        max_price=_price(max_price),
        provider=_pick(provider, catalog.providers(), "'--provider'"),
        min_cores=min_cores,
        min_memory_gb=min_memory_gb,
    )
    if sort is SortKey.HS23_PRICE:
        no_score = Decimal("Infinity")
        matches.sort(key=lambda o: (cost_per_hs23_hour(o) or no_score, o.id))
    else:
        matches.sort(key=lambda o: (o.price_per_hour, o.id))
    shown = matches if limit == 0 else matches[:limit]
    if output is OutputFormat.JSON:
        typer.echo(
            json.dumps({"matched": len(matches), "offerings": [_record(catalog, o) for o in shown]}, indent=1)
        )
    elif output is OutputFormat.CSV:
        records = [_record(catalog, o) for o in shown]
        writer = csv.DictWriter(sys.stdout, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        writer.writerows(records)
    else:
        Console().print(_table(shown, len(matches), sort))


def register(root: typer.Typer) -> None:
    root.command("offerings")(offerings)

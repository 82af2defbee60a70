"""Showing a reconciliation: rich tables for the terminal and CSV files for finance."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from accounting.reconcile import Compared, Reconciliation
from provisioner.model import from_micro


def _pct(c: Compared) -> str:
    pct = c.difference_pct
    if pct is None:
        return "not estimated" if c.invoiced_micro else "—"
    return f"{pct:+.2f} %"


def _usd(micro: int) -> str:
    return f"${from_micro(micro):,.2f}"


def _compared(title: str, names: Sequence[str], rows: Sequence[Compared], limit: int | None = None) -> Table:
    table = Table(title=title)
    for name in (*names, "estimated", "invoiced", "difference", "%"):
        table.add_column(name, justify="left" if name in names else "right")
    for c in rows[:limit] if limit else rows:
        table.add_row(
            *c.key[: len(names)],
            _usd(c.estimated_micro),
            _usd(c.invoiced_micro),
            _usd(c.difference_micro),
            _pct(c),
        )
    return table


def print_reconciliation(rec: Reconciliation, console: Console, *, resources: int = 20) -> None:
    m = rec.month
    if not rec.by_resource and not rec.unestimated:
        console.print(
            f"no invoice lines for {m}: import one with `provisioner accounting invoice import FILE`"
        )
        return
    console.print(_compared(f"Reconciliation {m}: by backend", ["backend"], rec.by_backend))
    console.print(_compared(f"Reconciliation {m}: by experiment", ["experiment"], rec.by_experiment))
    shown = min(resources, len(rec.by_resource))
    console.print(
        _compared(
            f"Reconciliation {m}: by resource (largest {shown} of {len(rec.by_resource)} differences)",
            ["resource", "experiment", "backend"],
            rec.by_resource,
            resources,
        )
    )
    table = Table(title=f"Invoiced {m}, not estimated by the broker (listed apart, not in the difference)")
    for name in ("category", "service", "usage type", "lines", "amount", "what it is"):
        table.add_column(name, justify="right" if name in ("lines", "amount") else "left")
    for u in rec.unestimated:
        table.add_row(u.category, u.service, u.usage_type, str(u.lines), _usd(u.amount_micro), u.why)
    console.print(table)
    t = rec.total
    console.print(
        f"[bold]{m}[/bold]: estimated {_usd(t.estimated_micro)} vs invoiced {_usd(t.invoiced_micro)} for the "
        f"broker's compute and egress: difference {_usd(t.difference_micro)} ({_pct(t)}); "
        f"{_usd(rec.unestimated_micro)} more on the invoice is listed apart; invoice total "
        f"{_usd(rec.invoice_total_micro)}"
    )


def write_reconciliation_csv(rec: Reconciliation, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, names, rows in (
        ("resource", ["resource", "experiment", "backend"], rec.by_resource),
        ("experiment", ["experiment"], rec.by_experiment),
        ("backend", ["backend"], rec.by_backend),
    ):
        path = out_dir / f"reconcile_{rec.month}_by_{name}.csv"
        with path.open("w", newline="") as handle:
            w = csv.writer(handle)
            w.writerow([*names, "estimated_usd", "invoiced_usd", "difference_usd", "difference_pct"])
            for c in rows:
                pct = c.difference_pct
                w.writerow([*c.key[: len(names)], c.estimated, c.invoiced, from_micro(c.difference_micro),
                            "" if pct is None else f"{pct:.4f}"])  # fmt: skip
        files.append(path)
    path = out_dir / f"reconcile_{rec.month}_not_estimated.csv"
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(
            ["category", "service", "usage_type", "lines", "broker_resources", "amount_usd", "what_it_is"]
        )
        for u in rec.unestimated:
            w.writerow([u.category, u.service, u.usage_type, u.lines, u.resources, u.amount, u.why])
    files.append(path)
    return files

"""The demo's last word on money: the simulated clouds send their invoices and the broker reconciles them.

AWS-like backends write a CUR 2.0 CSV, GCE-like ones a billing export in JSON lines, of what they
really ran; the broker imports them as an operator would (`accounting invoice import`) and prints
`report reconcile`: estimated vs invoiced per backend, the resources that differ and why, and the
invoice lines it does not estimate, each with what it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session

from accounting.invoice import parse_invoice
from accounting.period import Month
from accounting.reconcile import Reconciliation, reconcile, store_lines
from backends.simulated import SimulatedBackend, SimulatedCloud
from backends.simulated_invoice import write_cur, write_gcp

HALF_CENT = 5_000  # micro-dollars
WRITERS = {"aws": (write_cur, "csv"), "gce": (write_gcp, "jsonl")}


def invoices(
    backends: Mapping[str, SimulatedBackend], month: Month, out: Path, *, now: datetime
) -> list[Path]:
    """Each simulated cloud's invoice of `month` (as of `now`) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, backend in sorted(backends.items()):
        if not isinstance(backend, SimulatedCloud) or name not in WRITERS:
            continue
        write, suffix = WRITERS[name]
        path = out / f"{name}-invoice-{month}.{suffix}"
        if write(backend, path, month.start, month.end, until=now):
            files.append(path)
        else:
            path.unlink()  # nothing ran there this month: no invoice
    return files


def reconcile_demo(
    console: Console,
    db: Engine,
    backends: Mapping[str, SimulatedBackend],
    month: Month,
    out: Path,
    *,
    now: datetime,
) -> Reconciliation:
    with Session(db, expire_on_commit=False) as session:
        for path in invoices(backends, month, out, now=now):
            parsed = parse_invoice(path)
            store_lines(session, parsed.lines, path.name)
            for problem in parsed.problems:
                console.print(f"  [yellow]![/yellow] {path.name} {problem}")
        rec = reconcile(session, month)
    console.rule("[bold]invoice reconciliation[/bold]")
    table = Table(title=f"{month}: the broker's estimate vs the simulated providers' invoices")
    for col in ("backend", "estimated", "invoiced", "difference", "%"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for c in [*rec.by_backend, rec.total]:
        pct = c.difference_pct
        table.add_row(
            c.key[0],
            _usd(c.estimated_micro),
            _usd(c.invoiced_micro),
            _usd(c.difference_micro),
            "—" if pct is None else "0.00 %" if round(pct, 2) == 0 else f"{pct:+.2f} %",
        )
    console.print(table)
    differing = [c for c in rec.by_resource if abs(c.difference_micro) >= HALF_CENT]
    for c in differing[:5]:
        console.print(f"  {c.key[0]} ({c.key[2]}): {_usd(c.difference_micro)}: {c.explain()}")
    if len(differing) > 5:
        rest = sum(c.difference_micro for c in differing[5:])
        console.print(f"  … {len(differing) - 5} more resources differ by {_usd(rest)} in all")
    rounding = [c for c in rec.by_resource if 0 < abs(c.difference_micro) < HALF_CENT]
    if rounding:
        console.print(
            f"  {len(rounding)} resources differ by under half a cent each: the invoice rounds each hour"
        )
    for u in rec.unestimated:
        console.print(f"  not estimated: {u.usage_type} ({u.lines} lines) {_usd(u.amount_micro)}: {u.why}")
    return rec


def _usd(micro: int) -> str:
    cents = round(micro / 10_000)
    return f"${cents / 100:,.2f}" if cents >= 0 else f"-${-cents / 100:,.2f}"

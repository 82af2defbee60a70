"""The finance page's invoice reconciliation: the latest invoiced month's estimate vs invoice per experiment
and backend, read through `accounting.reconcile` (what `provisioner report reconcile` prints)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from accounting.period import Month
from accounting.reconcile import Compared, reconcile
from provisioner.model import InvoiceLineRow, row_time


@dataclass(frozen=True)
class ReconciliationView:
    month: Month
    rows: list[Compared]  # key: (experiment, backend), those the viewer sees
    totals: list[Compared]  # key: (experiment,) per experiment the viewer sees; ("all",) for wide viewers
    other_charges_micro: int | None  # invoice lines the ledger does not estimate (wide viewers only)


def latest_invoiced_month(db: Engine, now: datetime) -> Month | None:
    """The month of the newest imported invoice line that started by `now` (None: no invoice yet)."""
    with Session(db) as session:
        newest = session.exec(
            select(func.max(InvoiceLineRow.usage_start)).where(col(InvoiceLineRow.usage_start) <= now)
        ).one()
    when = row_time(newest) if newest is not None else None
    return Month.of(when) if when is not None else None


def _add(acc: dict[tuple[str, ...], Compared], key: tuple[str, ...], c: Compared) -> None:
    a = acc.setdefault(key, Compared(key))
    a.estimated_micro += c.estimated_micro
    a.invoiced_micro += c.invoiced_micro
    a.invoice_lines += c.invoice_lines


def month_view(db: Engine, now: datetime, experiments: frozenset[str] | None) -> ReconciliationView | None:
    """The reconciliation of the latest invoiced month, cut to `experiments` (None: all, with the totals)."""
    month = latest_invoiced_month(db, now)
    if month is None:
        return None
    with Session(db) as session:
        rec = reconcile(session, month)
    pairs: dict[tuple[str, ...], Compared] = {}
    per_experiment: dict[tuple[str, ...], Compared] = {}
    for c in rec.by_resource:  # key: (resource, experiment, backend)
        experiment, backend = c.key[1], c.key[2]
        if experiments is not None and experiment not in experiments:
            continue
        _add(pairs, (experiment, backend), c)
        _add(per_experiment, (experiment,), c)
    totals = [per_experiment[k] for k in sorted(per_experiment)]
    if experiments is None:
        totals.append(Compared(("all",), rec.total.estimated_micro, rec.total.invoiced_micro, rec.total.invoice_lines))
    return ReconciliationView(
        month=month,
        rows=[pairs[k] for k in sorted(pairs)],
        totals=totals,
        other_charges_micro=rec.unestimated_micro if experiments is None else None,
    )

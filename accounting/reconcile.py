"""Reconciling the cost ledger with provider invoices: estimated vs invoiced per resource, experiment, backend.

Invoice lines (`accounting.invoice`) are stored once each (keyed by the export's line id, so a
re-import changes nothing) and matched to the broker's resources by the broker's tag or label
(`provisioner-resource`), else by the provider's instance id. Compute and egress lines of matched
resources are what the ledger estimates; every other line (storage, IPs, NAT, support, credits,
tax, and compute of instances the broker never made) is listed apart with what it is, never
silently mixed into the difference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from accounting.invoice import InvoiceLine
from accounting.ledger import LEDGER
from accounting.period import Month
from provisioner.model import InvoiceLineRow, ResourceRow, from_micro, row_time

INVOICE: Table = InvoiceLineRow.__table__  # type: ignore[attr-defined]
RESOURCE_TAG = "provisioner_resource"  # backends.base.TAG_RESOURCE as `invoice.tag_key` normalises it
ESTIMATED = ("compute", "egress")  # invoice categories the ledger prices
UPSERT_BATCH = 500

WHY = {
    "storage": "disks and snapshots: the broker does not price storage",
    "ip": "public IP addresses: not in offering prices",
    "nat": "NAT gateway hours and processing: shared network, not per unit",
    "support": "the provider's support plan",
    "credit": "credits and discounts: the broker estimates at list or spot price",
    "tax": "tax",
    "other": "a charge the broker does not model",
    "compute": "compute of instances the broker did not create (no broker tag, unknown instance id)",
    "egress": "egress of instances the broker did not create",
}


@dataclass(frozen=True, slots=True)
class InvoiceImport:
    lines: int  # lines written (new or replacing the same line of an earlier import)
    months: list[str]


def store_lines(session: Session, lines: Sequence[InvoiceLine], file: str) -> InvoiceImport:
    """Upsert invoice lines by their line key; importing the same export twice changes nothing."""
    values = [
        {
            "line_key": ln.line_key,
            "source": str(ln.source),
            "file": file,
            "line": ln.line,
            "usage_start": ln.usage_start,
            "usage_end": ln.usage_end,
            "service": ln.service,
            "usage_type": ln.usage_type,
            "line_type": ln.line_type,
            "category": ln.category,
            "amount_micro": ln.amount_micro,
            "currency": ln.currency,
            "provider_resource": ln.provider_resource,
            "tags": dict(ln.tags),
            "usage_amount": ln.usage_amount,
            "account": ln.account,
        }
        for ln in {ln.line_key: ln for ln in lines}.values()
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(values), UPSERT_BATCH):
        stmt = insert(INVOICE).values(values[start : start + UPSERT_BATCH])
        updates = {c: stmt.excluded[c] for c in values[0] if c != "line_key"}
        session.execute(stmt.on_conflict_do_update(index_elements=["line_key"], set_=updates))
    session.commit()
    months = sorted({f"{ln.usage_start.year:04d}-{ln.usage_start.month:02d}" for ln in lines})
    return InvoiceImport(len(values), months)


@dataclass(slots=True)
class Compared:
    """Estimated (ledger) vs invoiced (matched compute and egress lines) for one key."""

    key: tuple[str, ...]
    estimated_micro: int = 0
    invoiced_micro: int = 0
    invoice_lines: int = 0
    invoiced_from: datetime | None = None  # first and last instant the invoice charged (resources only)
    invoiced_until: datetime | None = None
    held_from: datetime | None = None  # the broker's record of the resource: launched, released
    held_until: datetime | None = None

    def explain(self) -> str:
        """Why a resource's figures differ, from the two records of its time."""
        if self.invoiced_from is None:
            return "not on the invoice: the provider charged nothing for it"
        if self.held_from is None:
            return "the broker has no launch time for it"
        parts = []
        start = (self.invoiced_from - self.held_from).total_seconds()
        if abs(start) >= 1:
            parts.append(
                f"provider started charging {_seconds(start)} {'after' if start > 0 else 'before'} the broker's launch time"
            )
        if self.held_until is not None and self.invoiced_until is not None:
            end = (self.invoiced_until - self.held_until).total_seconds()
            if abs(end) >= 1:
                parts.append(
                    f"stopped {_seconds(end)} {'after' if end > 0 else 'before'} the broker's release time"
                )
        elif self.held_until is None:
            parts.append("still running: the broker counts to now, the invoice to its last hour")
        return "; ".join(parts) or "same times on both sides: price or rounding"

    @property
    def difference_micro(self) -> int:
        return self.invoiced_micro - self.estimated_micro

    @property
    def difference_pct(self) -> float | None:
        """(invoiced − estimated) / estimated in %; None when nothing was estimated."""
        if self.estimated_micro == 0:
            return None
        return 100.0 * self.difference_micro / self.estimated_micro

    @property
    def estimated(self) -> Decimal:
        return from_micro(self.estimated_micro)

    @property
    def invoiced(self) -> Decimal:
        return from_micro(self.invoiced_micro)


def _seconds(s: float) -> str:
    s = abs(s)
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


@dataclass(frozen=True, slots=True)
class Unestimated:
    """Invoice lines the ledger does not estimate, grouped by what they are."""

    category: str
    service: str
    usage_type: str
    amount_micro: int
    lines: int
    resources: int  # of those lines, how many distinct broker resources they belong to (0: none)

    @property
    def why(self) -> str:
        return WHY.get(self.category, WHY["other"])

    @property
    def amount(self) -> Decimal:
        return from_micro(self.amount_micro)


@dataclass(slots=True)
class Reconciliation:
    month: Month
    by_resource: list[Compared] = field(default_factory=list)  # key: (resource, experiment, backend)
    by_experiment: list[Compared] = field(default_factory=list)
    by_backend: list[Compared] = field(default_factory=list)
    unestimated: list[Unestimated] = field(default_factory=list)
    total: Compared = field(default_factory=lambda: Compared(("total",)))
    invoice_total_micro: int = 0  # every line of the month, whatever it is

    @property
    def unestimated_micro(self) -> int:
        return sum(u.amount_micro for u in self.unestimated)


def _resource_index(rows: Iterable[ResourceRow]) -> dict[str, ResourceRow]:
    """Resource rows by every id an invoice may name them with: broker id, provider id, GCE name."""
    index: dict[str, ResourceRow] = {}
    for row in rows:
        if row.provider_id:
            index[f"provider:{row.provider_id}"] = row
            zone, sep, name = row.provider_id.partition("/")
            if sep:  # GCE "<zone>/<name>": the export names it .../zones/<zone>/instances/<name>
                index[f"provider:zones/{zone}/instances/{name}"] = row
        index[f"broker:{row.id}"] = row
    return index


def match(line: InvoiceLineRow, index: Mapping[str, ResourceRow]) -> ResourceRow | None:
    """The broker resource an invoice line belongs to: by the broker's tag, else by instance id."""
    tagged = (line.tags or {}).get(RESOURCE_TAG)
    if tagged and f"broker:{tagged}" in index:
        return index[f"broker:{tagged}"]
    ref = line.provider_resource
    if not ref:
        return None
    if f"provider:{ref}" in index:
        return index[f"provider:{ref}"]
    if "/zones/" in ref and "/instances/" in ref:
        tail = "zones/" + ref.split("/zones/", 1)[1]
        return index.get(f"provider:{tail}")
    return None


def reconcile(session: Session, month: Month) -> Reconciliation:
    """The month's invoice lines against the month's ledger."""
    out = Reconciliation(month)
    lines = list(
        session.execute(
            select(InvoiceLineRow).where(
                INVOICE.c.usage_start >= month.start, INVOICE.c.usage_start < month.end
            )
        ).scalars()
    )
    index = _resource_index(session.execute(select(ResourceRow)).scalars())
    per_resource: dict[str, Compared] = {}
    unestimated: dict[tuple[str, str, str], list[int]] = {}
    unestimated_resources: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    covered: set[str] = set()  # backends the invoices speak for
    for line in lines:
        out.invoice_total_micro += line.amount_micro
        row = match(line, index)
        if row is not None and line.category in ESTIMATED:
            key = (row.id, row.experiment or "unknown", row.backend)
            c = per_resource.setdefault(row.id, Compared(key))
            c.invoiced_micro += line.amount_micro
            c.invoice_lines += 1
            if line.category == "compute":
                start, end = row_time(line.usage_start), row_time(line.usage_end)
                c.invoiced_from = start if c.invoiced_from is None else min(c.invoiced_from, start)  # type: ignore[type-var]
                c.invoiced_until = end if c.invoiced_until is None else max(c.invoiced_until, end)  # type: ignore[type-var]
            covered.add(row.backend)
            continue
        if row is not None:
            covered.add(row.backend)
        group = (line.category, line.service, line.usage_type)
        acc = unestimated.setdefault(group, [0, 0])
        acc[0] += line.amount_micro
        acc[1] += 1
        if row is not None:
            unestimated_resources[group].add(row.id)
    estimated = session.execute(
        select(LEDGER.c.resource_id, LEDGER.c.experiment, LEDGER.c.backend, func.sum(LEDGER.c.amount_micro))
        .where(LEDGER.c.hour >= month.start, LEDGER.c.hour < month.end)
        .group_by(LEDGER.c.resource_id, LEDGER.c.experiment, LEDGER.c.backend)
    ).all()
    for rid, experiment, backend, amount in estimated:
        if backend not in covered:
            continue  # an HPC allocation or a cloud whose invoice was not imported
        c = per_resource.setdefault(rid, Compared((rid, experiment, backend)))
        c.estimated_micro += int(amount or 0)
    by_id = {row.id: row for key, row in index.items() if key.startswith("broker:")}
    for rid, c in per_resource.items():
        held = by_id.get(rid)
        if held is not None:
            c.held_from, c.held_until = row_time(held.launched_at), row_time(held.released_at)
    out.by_resource = sorted(per_resource.values(), key=lambda c: (-abs(c.difference_micro), c.key))
    out.by_experiment = _rollup(out.by_resource, 1)
    out.by_backend = _rollup(out.by_resource, 2)
    for c in out.by_resource:
        out.total.estimated_micro += c.estimated_micro
        out.total.invoiced_micro += c.invoiced_micro
        out.total.invoice_lines += c.invoice_lines
    out.unestimated = sorted(
        (
            Unestimated(cat, svc, usage, amount, n, len(unestimated_resources[(cat, svc, usage)]))
            for (cat, svc, usage), (amount, n) in unestimated.items()
        ),
        key=lambda u: (u.category, -abs(u.amount_micro), u.service, u.usage_type),
    )
    return out


def _rollup(rows: Sequence[Compared], position: int) -> list[Compared]:
    acc: dict[str, Compared] = {}
    for c in rows:
        name = c.key[position]
        a = acc.setdefault(name, Compared((name,)))
        a.estimated_micro += c.estimated_micro
        a.invoiced_micro += c.invoiced_micro
        a.invoice_lines += c.invoice_lines
    return [acc[k] for k in sorted(acc)]

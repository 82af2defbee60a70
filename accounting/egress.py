"""Measured egress: the providers' bytes-out counters of each unit (`resource.egress` events) as GB.

The reconciler stores an event each time a listing shows a unit's counter moved (payload: the
counter and the value before). Each event's increase is attributed to the hour it was seen. The
same samples price the ledger's egress rows (marginal tiers of the unit's region) and give the
planner what was already sent this period: per source location (tiers) and per experiment (caps).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Table, select
from sqlmodel import Session

from accounting.ledger import EgressUsage
from provisioner.domain import Offering
from provisioner.model import EventRow, ResourceRow, row_time

EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
RESOURCES: Table = ResourceRow.__table__  # type: ignore[attr-defined]
EGRESS_EVENT = "resource.egress"
GB = 1e9


def source_of(offering_id: str, backend: str, offerings: Mapping[str, Offering]) -> str:
    """Where a unit's data leaves from: "<provider>:<region>" of its offering."""
    known = offerings.get(offering_id)
    if known is not None:
        return known.location
    parts = offering_id.split(":")
    return f"{parts[0]}:{parts[1]}" if len(parts) >= 2 else backend


def egress_samples(
    session: Session, start: datetime, end: datetime, offerings: Mapping[str, Offering]
) -> list[EgressUsage]:
    """GB each unit sent in [start, end), from the counter increases seen in that period."""
    e = EVENTS.c
    rows = session.execute(
        select(e.subject, e.at, e.payload)
        .where(e.kind == EGRESS_EVENT, e.at >= start, e.at < end)
        .order_by(e.id)
    ).all()
    if not rows:
        return []
    ids = sorted({r[0] for r in rows})
    units = {
        rid: (offering, backend)
        for rid, offering, backend in session.execute(
            select(RESOURCES.c.id, RESOURCES.c.offering_id, RESOURCES.c.backend).where(
                RESOURCES.c.id.in_(ids)
            )
        )
    }
    out = []
    for rid, at, payload in rows:
        if rid not in units or not isinstance(payload, dict):
            continue
        sent = int(payload.get("bytes", 0)) - int(payload.get("previous", 0))
        if sent <= 0:
            continue  # a counter that went back (a restarted agent) says nothing about this period
        when = row_time(at)
        assert when is not None
        offering_id, backend = units[rid]
        out.append(EgressUsage(rid, when, sent / GB, source_of(offering_id, backend, offerings)))
    return out


def egress_used_gb(
    session: Session,
    start: datetime,
    end: datetime,
    offerings: Mapping[str, Offering],
    *,
    period: str | None = None,
) -> dict[str, float]:
    """GB sent in [start, end): by source location ("aws:us-east-1", for the tiers) and by experiment
    ("atlas", or "atlas/<period>" when `period` is given, for the caps)."""
    samples = egress_samples(session, start, end, offerings)
    if not samples:
        return {}
    ids = sorted({s.resource_id for s in samples})
    experiments = dict(
        session.execute(select(RESOURCES.c.id, RESOURCES.c.experiment).where(RESOURCES.c.id.in_(ids))).all()
    )
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        out[s.source] += s.gb
        experiment = experiments.get(s.resource_id)
        if experiment:
            out[f"{experiment}/{period}" if period else experiment] += s.gb
    return dict(out)

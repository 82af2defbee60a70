"""Open burst requests in the store: end those whose rule says so, and give the engine what the rest still need.

Called by the engine's observe step every cycle; an ended request's demand disappears, so the engine
drains what it got and launches nothing more for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from provisioner.bursts.demand import remaining_demand
from provisioner.bursts.ending import Ending, ending
from provisioner.bursts.progress import RequestProgress, load_progress
from provisioner.domain import DemandGroup
from provisioner.model import BurstRequestRow, EventRow, row_time, to_micro
from provisioner.requests import BurstRequestSpec, RequestStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Finished:
    request_id: str
    ending: Ending
    progress: RequestProgress


@dataclass(frozen=True, slots=True)
class OpenDemand:
    groups: list[DemandGroup]
    finished: list[Finished]


def settle_requests(db: Engine, now: datetime, *, write: bool = True) -> OpenDemand:
    """End every open request whose rule says so (status done, which rule, cost) and return the demand
    of those still open, each reduced by what it already got. `write=False` (a dry run): the same
    answer, nothing stored."""
    groups: list[DemandGroup] = []
    finished: list[Finished] = []
    with Session(db, expire_on_commit=False) as session:
        rows = list(
            session.exec(select(BurstRequestRow).where(col(BurstRequestRow.status).in_(RequestStatus.OPEN)))
        )
        for row in sorted(rows, key=lambda r: r.id):
            spec = BurstRequestSpec.model_validate(row.spec)
            admitted_at = row_time(row.created_at) or now
            progress = load_progress(session, row.id, since=admitted_at, now=now)
            end = ending(spec, admitted_at, progress, now)
            if end is not None:
                if write:
                    _finish(session, row, end, progress, now)
                finished.append(Finished(row.id, end, progress))
                continue
            if write and row.status == RequestStatus.ADMITTED and progress.first_launch is not None:
                row.status = RequestStatus.RUNNING
                row.updated_at = now
                session.add(row)
            groups.append(remaining_demand(row.id, spec, admitted_at, progress, now))
        if write:
            session.commit()
    for f in finished if write else ():
        log.info("request.finished", request=f.request_id, ended_by=str(f.ending.by), reason=f.ending.reason)
    return OpenDemand(groups, finished)


def _finish(
    session: Session, row: BurstRequestRow, end: Ending, progress: RequestProgress, now: datetime
) -> None:
    row.status = RequestStatus.DONE
    row.ended_by = str(end.by)
    row.reason = end.reason
    row.cost_so_far_micro = to_micro(progress.cost_so_far)
    row.updated_at = now
    session.add(row)
    session.add(
        EventRow(
            at=now,
            kind="request.finished",
            subject=row.id,
            payload={
                "experiment": row.experiment,
                "ended_by": str(end.by),
                "reason": end.reason,
                "cost_so_far": str(progress.cost_so_far),
                "hs23_hours_delivered": round(progress.hs23_hours_delivered, 3),
            },
        )
    )

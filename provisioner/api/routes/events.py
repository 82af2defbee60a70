"""/v1/events: the stored state changes (resource transitions, plans, requests, circuit breakers)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session, col, select

from provisioner.api.context import ApiContext, get_context
from provisioner.api.schemas import EventOut
from provisioner.model import EventRow

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("", response_model=list[EventOut])
def get_events(
    kind: str | None = Query(None, description="e.g. resource.state, plan.created, request.admitted"),
    subject: str | None = Query(None, description="id of the thing (resource, plan, request, backend)"),
    limit: int = Query(100, ge=1, le=10_000, description="the most recent this many"),
    context: ApiContext = Depends(get_context),
) -> list[EventOut]:
    """Events, newest first."""
    query = select(EventRow)
    if kind is not None:
        query = query.where(EventRow.kind == kind)
    if subject is not None:
        query = query.where(EventRow.subject == subject)
    with Session(context.broker.db) as session:
        rows = session.exec(query.order_by(col(EventRow.id).desc()).limit(limit))
        return [EventOut.of(r) for r in rows]

"""/v1/events: the stored state changes (resource transitions, plans, requests, circuit breakers)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session, col, select

from provisioner.api.auth import Principal, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.pagination import Page, page
from provisioner.api.schemas import EventOut
from provisioner.api.tenancy import events_of
from provisioner.model import EventRow

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("", response_model=list[EventOut])
def get_events(
    kind: str | None = Query(None, description="e.g. resource.state, plan.created, request.admitted"),
    subject: str | None = Query(None, description="id of the thing (resource, plan, request, backend)"),
    paging: Page = Depends(page),
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.RESOURCE_READ)),
) -> list[EventOut]:
    """Events, newest first: an experiment's token sees those about its own resources, requests and budget."""
    query = select(EventRow)
    if who.experiments is not None:
        query = query.where(events_of(who.experiments))
    if kind is not None:
        query = query.where(EventRow.kind == kind)
    if subject is not None:
        query = query.where(EventRow.subject == subject)
    with Session(context.broker.db) as session:
        rows = session.exec(query.order_by(col(EventRow.id).desc()).offset(paging.offset).limit(paging.limit))
        return [EventOut.of(r) for r in rows]

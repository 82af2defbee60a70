"""/v1/resources: the units of capacity the broker tracks, filtered by state, backend and experiment."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session, col, select

from provisioner.api.context import ApiContext, get_context
from provisioner.api.schemas import ResourceOut
from provisioner.domain import ResourceState
from provisioner.model import ResourceRow

router = APIRouter(prefix="/v1/resources", tags=["resources"])


@router.get("", response_model=list[ResourceOut])
def get_resources(
    state: ResourceState | None = Query(None, description="lifecycle state"),
    backend: str | None = Query(None, description="configured backend name"),
    experiment: str | None = Query(None, description="experiment (VO)"),
    limit: int = Query(1000, ge=1, le=100_000, description="at most this many, newest first"),
    context: ApiContext = Depends(get_context),
) -> list[ResourceOut]:
    """Resources, newest first."""
    query = select(ResourceRow)
    if state is not None:
        query = query.where(ResourceRow.state == str(state))
    if backend is not None:
        query = query.where(ResourceRow.backend == backend)
    if experiment is not None:
        query = query.where(ResourceRow.experiment == experiment)
    query = query.order_by(col(ResourceRow.created_at).desc(), col(ResourceRow.id)).limit(limit)
    with Session(context.broker.db) as session:
        return [ResourceOut.of(r) for r in session.exec(query)]

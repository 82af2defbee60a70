"""/v1/resources: the units of capacity the broker tracks, filtered by state, backend and experiment."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session, col, select

from provisioner.api.auth import Authenticator, Principal, get_auth, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.pagination import Page, page
from provisioner.api.schemas import ResourceOut
from provisioner.domain import ResourceState
from provisioner.model import ResourceRow

router = APIRouter(prefix="/v1/resources", tags=["resources"])


@router.get("", response_model=list[ResourceOut])
def get_resources(
    state: ResourceState | None = Query(None, description="lifecycle state"),
    backend: str | None = Query(None, description="configured backend name"),
    experiment: str | None = Query(None, description="experiment (VO)"),
    paging: Page = Depends(page),
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.RESOURCE_READ)),
    auth: Authenticator = Depends(get_auth),
) -> list[ResourceOut]:
    """Resources, newest first: only those of the experiments the token acts for."""
    query = select(ResourceRow)
    if state is not None:
        query = query.where(ResourceRow.state == str(state))
    if backend is not None:
        query = query.where(ResourceRow.backend == backend)
    if experiment is not None:
        auth.confine(who, experiment)
        query = query.where(ResourceRow.experiment == experiment)
    elif who.experiments is not None:
        query = query.where(col(ResourceRow.experiment).in_(sorted(who.experiments)))
    query = query.order_by(col(ResourceRow.created_at).desc(), col(ResourceRow.id))
    with Session(context.broker.db) as session:
        rows = session.exec(query.offset(paging.offset).limit(paging.limit))
        return [ResourceOut.of(r) for r in rows]

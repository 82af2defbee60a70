"""/v1/requests: experiments ask for burst capacity, follow its status and cost, and cancel it."""

from __future__ import annotations

from typing import Any

import anyio.from_thread
from fastapi import APIRouter, Depends, Query, status
from sqlmodel import Session, col, select

from provisioner.admission import admit_spec
from provisioner.api.auth import Authenticator, Principal, get_auth, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.pagination import Page, page
from provisioner.api.schemas import ErrorOut, RequestCreatedOut, RequestOut, ResourceOut
from provisioner.demand_signal import announce
from provisioner.domain import LIVE_STATES
from provisioner.model import BurstRequestRow, from_micro, row_time
from provisioner.requests import (
    BurstRequestSpec,
    RequestStatus,
    cancel,
    cost_of_resources,
    request_resources,
    view,
)

router = APIRouter(prefix="/v1/requests", tags=["requests"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no burst request with this id"}
}


def _out(context: ApiContext, row: BurstRequestRow) -> RequestOut:
    broker = context.broker
    with Session(broker.db, expire_on_commit=False) as session:
        resources = request_resources(session, [row.id])[row.id]
        cost = cost_of_resources(session, resources, broker.clock.now())
    live = {str(s) for s in LIVE_STATES}
    return RequestOut(
        id=row.id,
        experiment=row.experiment,
        status=row.status,
        ended_by=row.ended_by,
        reason=row.reason,
        spec=row.spec,
        max_cost_usd=from_micro(row.max_cost_micro) if row.max_cost_micro is not None else None,
        cost_so_far_usd=cost,
        live_resources=sum(1 for r in resources if r.state in live),
        created_at=row_time(row.created_at) or row.created_at,
        updated_at=row_time(row.updated_at) or row.updated_at,
        resources=[ResourceOut.of(r) for r in resources],
    )


def _visible(context: ApiContext, auth: Authenticator, who: Principal, request_id: str) -> BurstRequestRow:
    row = view(context.broker.db, request_id, now=context.broker.clock.now()).row
    auth.confine(who, row.experiment)
    return row


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RequestCreatedOut)
def create_request(
    spec: BurstRequestSpec,
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.BURST_REQUEST)),
    auth: Authenticator = Depends(get_auth),
) -> RequestCreatedOut:
    """Ask for capacity. It is admitted against the policies and the planner's estimate, or rejected
    with the reason; either way it is stored (201) and can be looked up by its id."""
    auth.confine(who, spec.experiment)
    admitted = admit_spec(context.broker, spec)
    if admitted.admission.accepted:
        # a sync route runs in a worker thread: the bus lives on the event loop
        broker = context.broker
        anyio.from_thread.run(
            announce,
            broker.store.bus,
            broker.settings.state_dir,
            {"request_id": admitted.row.id, "experiment": spec.experiment},
        )
    return RequestCreatedOut(
        id=admitted.row.id,
        experiment=spec.experiment,
        status=RequestStatus.ADMITTED if admitted.admission.accepted else RequestStatus.REJECTED,
        reason=admitted.admission.reason,
        estimated_cost_usd=admitted.admission.estimated_cost,
        offerings=admitted.offerings,
    )


@router.get("", response_model=list[RequestOut])
def get_requests(
    experiment: str | None = Query(None, description="only this experiment's requests"),
    paging: Page = Depends(page),
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.BURST_READ)),
    auth: Authenticator = Depends(get_auth),
) -> list[RequestOut]:
    """Requests, newest first, with status and cost so far: only the experiments the token acts for."""
    query = select(BurstRequestRow)
    if experiment is not None:
        auth.confine(who, experiment)
        query = query.where(BurstRequestRow.experiment == experiment)
    elif who.experiments is not None:
        query = query.where(col(BurstRequestRow.experiment).in_(sorted(who.experiments)))
    query = query.order_by(col(BurstRequestRow.created_at).desc(), col(BurstRequestRow.id))
    with Session(context.broker.db, expire_on_commit=False) as session:
        rows = list(session.exec(query.offset(paging.offset).limit(paging.limit)))
    return [_out(context, row) for row in rows]


@router.get("/{request_id}", response_model=RequestOut, responses=NOT_FOUND)
def get_request(
    request_id: str,
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.BURST_READ)),
    auth: Authenticator = Depends(get_auth),
) -> RequestOut:
    """One request: status, cost so far and the resources it got."""
    return _out(context, _visible(context, auth, who, request_id))


@router.delete("/{request_id}", response_model=RequestOut, responses=NOT_FOUND)
def cancel_request(
    request_id: str,
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.BURST_CANCEL)),
    auth: Authenticator = Depends(get_auth),
) -> RequestOut:
    """Cancel: the demand goes away, so the engine drains what the request got. Idempotent."""
    _visible(context, auth, who, request_id)
    return _out(context, cancel(context.broker.db, request_id))

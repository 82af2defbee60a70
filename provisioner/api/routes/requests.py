"""/v1/requests: experiments ask for burst capacity, follow its status and cost, and cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, status

from provisioner.admission import admit_spec
from provisioner.api.admission import request_resources
from provisioner.api.context import ApiContext, get_context
from provisioner.api.schemas import ErrorOut, RequestCreatedOut, RequestOut, ResourceOut
from provisioner.domain import LIVE_STATES
from provisioner.model import BurstRequestRow, from_micro, row_time
from provisioner.requests import (
    BurstRequestSpec,
    RequestStatus,
    cancel,
    cost_of_resources,
    list_requests,
    view,
)

router = APIRouter(prefix="/v1/requests", tags=["requests"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no burst request with this id"}
}


def _out(context: ApiContext, row: BurstRequestRow) -> RequestOut:
    broker = context.broker
    resources = request_resources(broker, row.id)
    live = {str(s) for s in LIVE_STATES}
    return RequestOut(
        id=row.id,
        experiment=row.experiment,
        status=row.status,
        reason=row.reason,
        spec=row.spec,
        max_cost_usd=from_micro(row.max_cost_micro) if row.max_cost_micro is not None else None,
        cost_so_far_usd=cost_of_resources(resources, broker.clock.now()),
        live_resources=sum(1 for r in resources if r.state in live),
        created_at=row_time(row.created_at) or row.created_at,
        updated_at=row_time(row.updated_at) or row.updated_at,
        resources=[ResourceOut.of(r) for r in resources],
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RequestCreatedOut)
def create_request(spec: BurstRequestSpec, context: ApiContext = Depends(get_context)) -> RequestCreatedOut:
    """Ask for capacity. It is admitted against the policies and the planner's estimate, or rejected
    with the reason; either way it is stored (201) and can be looked up by its id."""
    admitted = admit_spec(context.broker, spec)
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
    context: ApiContext = Depends(get_context),
) -> list[RequestOut]:
    """Requests, newest first, with status and cost so far."""
    return [_out(context, v.row) for v in list_requests(context.broker.db, experiment=experiment)]


@router.get("/{request_id}", response_model=RequestOut, responses=NOT_FOUND)
def get_request(request_id: str, context: ApiContext = Depends(get_context)) -> RequestOut:
    """One request: status, cost so far and the resources it got."""
    return _out(context, view(context.broker.db, request_id).row)


@router.delete("/{request_id}", response_model=RequestOut, responses=NOT_FOUND)
def cancel_request(request_id: str, context: ApiContext = Depends(get_context)) -> RequestOut:
    """Cancel: the demand goes away, so the engine drains what the request got. Idempotent."""
    return _out(context, cancel(context.broker.db, request_id))

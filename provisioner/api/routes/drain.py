"""/v1/resources/{id}/drain and /release: an operator takes one unit out of service (scope resource:drain)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status

from provisioner.api.auth import Authenticator, Principal, get_auth, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.schemas import ErrorOut, ResourceOut
from provisioner.domain import DrainOrder, DrainReason, ResourceState
from provisioner.model import ResourceRow

router = APIRouter(prefix="/v1/resources", tags=["resources"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no resource with this id"},
    409: {"model": ErrorOut, "description": "the unit is already released, failed or lost"},
}
DRAINABLE = (ResourceState.PROVISIONING, ResourceState.RUNNING, ResourceState.DRAINING)


def _drainable(context: ApiContext, auth: Authenticator, who: Principal, resource_id: str) -> ResourceRow:
    row = context.broker.store.get(resource_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no resource with id '{resource_id}'")
    auth.confine(who, row.experiment)
    if ResourceState(row.state) not in DRAINABLE:
        raise HTTPException(status.HTTP_409_CONFLICT, f"resource '{resource_id}' is {row.state}: nothing to drain")
    return row


def _fresh(context: ApiContext, resource_id: str) -> ResourceOut:
    row = context.broker.store.get(resource_id)
    assert row is not None
    return ResourceOut.of(row)


@router.post("/{resource_id}/drain", response_model=ResourceOut, responses=RESPONSES)
async def drain_resource(
    resource_id: str,
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.RESOURCE_DRAIN)),
    auth: Authenticator = Depends(get_auth),
) -> ResourceOut:
    """Give the unit no new work; the reconciler releases it once its jobs are done. Idempotent."""
    _drainable(context, auth, who, resource_id)
    order = DrainOrder(resource_id, DrainReason.OPERATOR, f"asked by {who.subject}")
    await context.broker.engine.actuator.drain([order])
    return _fresh(context, resource_id)


@router.post("/{resource_id}/release", response_model=ResourceOut, responses=RESPONSES)
async def release_resource(
    resource_id: str,
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.RESOURCE_DRAIN)),
    auth: Authenticator = Depends(get_auth),
) -> ResourceOut:
    """Terminate the unit now, running jobs or not (draining first, so a crash midway is recovered)."""
    row = _drainable(context, auth, who, resource_id)
    await context.broker.engine.actuator.release(row, f"{DrainReason.OPERATOR}: {who.subject}")
    return _fresh(context, resource_id)

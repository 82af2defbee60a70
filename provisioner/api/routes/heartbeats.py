"""/v1/heartbeats: the pilot or worker on a unit says whether it runs work (scope resource:heartbeat)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel

from provisioner.api.auth import Authenticator, Principal, get_auth, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.schemas import ErrorOut
from provisioner.heartbeats import Heartbeat, UnknownUnit, record
from provisioner.model import row_time

router = APIRouter(prefix="/v1/heartbeats", tags=["resources"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no unit that can still run work has this id"},
}


class HeartbeatOut(BaseModel):
    resource_id: str
    state: str
    busy: bool
    at: datetime


@router.post("", response_model=HeartbeatOut, status_code=status.HTTP_202_ACCEPTED, responses=RESPONSES)
def post_heartbeat(
    beat: Heartbeat,
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.RESOURCE_HEARTBEAT)),
    auth: Authenticator = Depends(get_auth),
) -> HeartbeatOut:
    """Record that the unit is busy or idle now; a unit reported idle for the idle-drain time is drained."""
    store = context.broker.store
    found = store.find_unit(resource_id=beat.resource_id, instance_id=beat.instance_id)
    if found is not None:
        auth.confine(who, found.experiment)  # a pilot token of one experiment speaks for its units only
    try:
        row = record(store, beat)
    except UnknownUnit as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no live unit '{exc}'") from None
    at = row_time(row.heartbeat_at)
    assert at is not None
    return HeartbeatOut(resource_id=row.id, state=row.state, busy=row.busy, at=at)

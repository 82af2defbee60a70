"""/healthz (is the database reachable) and /metrics (Prometheus text format); neither needs the token."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from provisioner.api.context import ApiContext, get_context
from provisioner.api.schemas import HealthOut

log = structlog.get_logger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def healthz(context: ApiContext = Depends(get_context)) -> HealthOut | JSONResponse:
    """200 when the database answers a query, 503 when it does not."""
    try:
        with context.broker.db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        # The exception text can hold the database URL (and its password): log the type only.
        log.warning("healthz.database_unreachable", error=type(exc).__name__)
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content=HealthOut(status="unavailable", database="unreachable").model_dump(),
        )
    return HealthOut(status="ok", database="reachable")


@router.get("/metrics", response_class=Response)
def metrics(context: ApiContext = Depends(get_context)) -> Response:
    """The broker's metrics (its own registry) in the Prometheus text exposition format."""
    return Response(content=context.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

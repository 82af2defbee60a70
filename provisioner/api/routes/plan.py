"""/v1/plan (what the engine would do now, explained) and /v1/decisions (the plans it stored and acted on)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlmodel import Session, col, select

from provisioner.api.auth import Principal, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.pagination import Page, page
from provisioner.api.schemas import ErrorOut, PlanOut, StoredPlanOut
from provisioner.api.tenancy import plan_for
from provisioner.model import DecisionRow, PlanRow

router = APIRouter(prefix="/v1", tags=["plan"])


@router.get("/plan", response_model=PlanOut)
async def get_plan(
    alternatives: int = Query(5, ge=0, le=50, description="rejected alternatives to show per demand group"),
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.RESOURCE_READ)),
) -> PlanOut:
    """A dry run of one engine cycle: per demand group the chosen offering, its cost per HS23-hour
    broken down, the best rejected alternatives with the reason, and the drains. Changes nothing."""
    started = time.perf_counter()
    report = await context.broker.engine.run_cycle(dry_run=True)
    context.metrics.api_dry_run_seconds.observe(time.perf_counter() - started)
    if report.plan is None:  # run_cycle always plans in a dry run; guard against a future change
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the engine produced no plan")
    out = PlanOut.of(
        report.plan,
        started_at=report.started_at,
        pending_jobs=report.pending_jobs,
        groups=len(report.groups),
        offerings=len(report.offerings),
        errors=report.errors,
        alternatives=alternatives,
    )
    if who.experiments is not None:  # an experiment sees its own groups, drains and totals only
        out = plan_for(
            out, who.experiments, groups=report.groups, offerings=report.offerings, db=context.broker.db
        )
    return out


@router.get(
    "/decisions",
    response_model=list[StoredPlanOut],
    responses={404: {"model": ErrorOut, "description": "no stored plan with this id"}},
)
def get_decisions(
    plan_id: str | None = Query(None, description="one stored plan; default: the most recent ones"),
    paging: Page = Depends(page),
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.RESOURCE_READ)),
) -> list[StoredPlanOut]:
    """Stored plans, newest first, with one decision per demand group and its explanation (an
    experiment's token sees its own groups' decisions only)."""
    with Session(context.broker.db) as session:
        if plan_id is not None:
            one = session.get(PlanRow, plan_id)
            if one is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no stored plan with id '{plan_id}'")
            plans = [one]
        else:
            plans = list(
                session.exec(
                    select(PlanRow)
                    .order_by(col(PlanRow.created_at).desc(), col(PlanRow.id))
                    .offset(paging.offset)
                    .limit(paging.limit)
                )
            )
        ids = [p.id for p in plans]
        decisions = list(
            session.exec(
                select(DecisionRow).where(col(DecisionRow.plan_id).in_(ids)).order_by(col(DecisionRow.id))
            )
        )
    by_plan: dict[str, list[DecisionRow]] = {i: [] for i in ids}
    for d in decisions:
        if who.sees(d.experiment):
            by_plan[d.plan_id].append(d)
    return [StoredPlanOut.of(p, by_plan[p.id]) for p in plans]

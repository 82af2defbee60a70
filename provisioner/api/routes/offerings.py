"""/v1/offerings: which ways to get capacity fit given criteria (the catalog and the policy's HPC/backfill)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from provisioner.api.auth import Principal, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.pagination import Page, page
from provisioner.api.schemas import OfferingOut, OfferingsOut

router = APIRouter(prefix="/v1/offerings", tags=["offerings"])


@router.get("", response_model=OfferingsOut)
def get_offerings(
    arch: str | None = Query(None, description="x86_64 or arm64"),
    gpu: bool | None = Query(None, description="true: with GPUs; false: without"),
    gpu_model: str | None = Query(None, description="A100, H100, L4... (case-insensitive)"),
    region: str | None = Query(None, description="e.g. us-east-1"),
    market: str | None = Query(None, description="on_demand, spot, allocation or backfill"),
    max_price: str | None = Query(None, description="USD per unit-hour, inclusive"),
    provider: str | None = Query(None, description="aws, gce, slurm, backfill..."),
    paging: Page = Depends(page),
    context: ApiContext = Depends(get_context),
    _who: Principal = Depends(require(Scope.BURST_READ, Scope.BURST_REQUEST, Scope.RESOURCE_READ)),
) -> OfferingsOut:
    """Offerings matching every given filter; an impossible filter is a 422 naming it."""
    matched = context.offerings.filter(
        arch=arch,
        gpu=gpu,
        gpu_model=gpu_model,
        region=region,
        market=market,
        max_price=max_price,
        provider=provider,
    )
    matched.sort(key=lambda o: (o.price_per_hour, o.id))
    return OfferingsOut(
        matched=len(matched),
        offerings=[OfferingOut.of(o) for o in matched[paging.offset : paging.offset + paging.limit]]
    )

"""Paging for every list the API returns: `offset` and `limit` query parameters, bounded."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Query

MAX_PAGE = 1000


@dataclass(frozen=True)
class Page:
    offset: int
    limit: int


def page(
    offset: int = Query(0, ge=0, le=10_000_000, description="skip this many (newest first)"),
    limit: int = Query(100, ge=1, le=MAX_PAGE, description="at most this many"),
) -> Page:
    return Page(offset, limit)

"""/v1/policy: the facility policy as an API object — read it, replace it atomically, its versions and diffs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from policies import PolicyError
from provisioner import policy_versions
from provisioner.api.auth import Authenticator, Principal, get_auth, operators_only, require
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.pagination import Page, page
from provisioner.api.schemas import ErrorOut, ValidationErrorOut
from provisioner.policy_versions import PolicyChangeRefused, PolicyVersion, StaleBaseVersion

router = APIRouter(prefix="/v1/policy", tags=["policy"])

MAX_POLICY_CHARS = 256 * 1024
MAX_VERSION = 2**31 - 1  # versions are database integers


class PolicyVersionOut(BaseModel):
    version: int
    name: str
    sha256: str
    author: str  # "file:<path>" when read from the policy file at start, else who applied it
    comment: str
    applied_at: datetime

    @classmethod
    def of(cls, v: PolicyVersion) -> PolicyVersionOut:
        return cls(
            version=v.version, name=v.name, sha256=v.sha256, author=v.author, comment=v.comment,
            applied_at=v.applied_at,
        )


class PolicyOut(PolicyVersionOut):
    content: str  # the TOML document, exactly as applied

    @classmethod
    def full(cls, v: PolicyVersion) -> PolicyOut:
        return cls(**PolicyVersionOut.of(v).model_dump(), content=v.content)


class PolicyIn(BaseModel):
    content: str = Field(min_length=1, max_length=MAX_POLICY_CHARS, description="the whole policy, TOML")
    comment: str = Field("", max_length=1000, description="why: kept with the version")
    base_version: int | None = Field(
        None, ge=1, le=MAX_VERSION, description="the version this edit started from; 409 if another was applied since"
    )


class PolicyProblemOut(BaseModel):
    line: int | None
    key: str
    problem: str


class PolicyInvalidOut(BaseModel):
    """Either the policy's problems (line, key), or the request's own (`detail`, as every 422 of the API)."""

    message: str
    problems: list[PolicyProblemOut] = []
    detail: list[Any] = []


class PolicyDiffOut(BaseModel):
    from_version: int
    to_version: int
    diff: str  # unified diff; empty when the two are the same


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such policy version"}}


def _version(context: ApiContext, version: int) -> PolicyVersion:
    found = policy_versions.get(context.broker.db, version)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no policy version {version}")
    return found


@router.get(
    "",
    response_model=PolicyOut,
    responses={**NOT_FOUND, 422: {"model": ValidationErrorOut, "description": "an unknown query parameter, named"}},
)
def get_policy(
    context: ApiContext = Depends(get_context),
    _who: Principal = Depends(require(Scope.POLICY_READ)),
) -> PolicyOut:
    """The policy in force: its version, who applied it and when, and the document."""
    newest = policy_versions.latest(context.broker.db)
    if newest is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no policy version is stored yet")
    return PolicyOut.full(newest)


@router.put(
    "",
    response_model=PolicyOut,
    responses={
        409: {"model": ErrorOut, "description": "edited from an older version, or needs a restart"},
        422: {"model": PolicyInvalidOut, "description": "every problem, by line and key; nothing applied"},
    },
)
def put_policy(
    body: PolicyIn,
    context: ApiContext = Depends(get_context),
    who: Principal = Depends(require(Scope.POLICY_WRITE)),
    auth: Authenticator = Depends(get_auth),
) -> PolicyOut | JSONResponse:
    """Validate and apply a new policy at once (all of it or none), kept as a new version."""
    operators_only(auth, who, "the facility policy's budgets and rules")
    keeper = context.broker.policy_keeper
    if keeper is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "this broker keeps no policy versions")
    try:
        stored = keeper.apply(body.content, author=who.subject, comment=body.comment, base_version=body.base_version)
    except PolicyError as exc:
        invalid = PolicyInvalidOut(
            message=str(exc),
            problems=[PolicyProblemOut(line=p.line, key=p.key, problem=p.problem) for p in exc.problems],
        )
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content=invalid.model_dump())
    except (PolicyChangeRefused, StaleBaseVersion) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return PolicyOut.full(stored)


@router.get("/versions", response_model=list[PolicyVersionOut])
def get_versions(
    paging: Page = Depends(page),
    context: ApiContext = Depends(get_context),
    _who: Principal = Depends(require(Scope.POLICY_READ)),
) -> list[PolicyVersionOut]:
    """Every version applied, newest first: who, when, why."""
    found = policy_versions.history(context.broker.db, offset=paging.offset, limit=paging.limit)
    return [PolicyVersionOut.of(v) for v in found]


@router.get("/versions/{version}", response_model=PolicyOut, responses=NOT_FOUND)
def get_version(
    version: Annotated[int, Path(ge=1, le=MAX_VERSION)],
    context: ApiContext = Depends(get_context),
    _who: Principal = Depends(require(Scope.POLICY_READ)),
) -> PolicyOut:
    """One version, with its document."""
    return PolicyOut.full(_version(context, version))


@router.get("/diff", response_model=PolicyDiffOut, responses=NOT_FOUND)
def get_diff(
    from_version: int = Query(..., alias="from", ge=1, le=MAX_VERSION, description="the older version"),
    to_version: int | None = Query(
        None, alias="to", ge=1, le=MAX_VERSION, description="default: the version in force"
    ),
    context: ApiContext = Depends(get_context),
    _who: Principal = Depends(require(Scope.POLICY_READ)),
) -> PolicyDiffOut:
    """What changed between two versions, as a unified diff."""
    old = _version(context, from_version)
    if to_version is None:
        newest = policy_versions.latest(context.broker.db)
        assert newest is not None  # `old` exists, so some version does
        new = newest
    else:
        new = _version(context, to_version)
    return PolicyDiffOut(from_version=old.version, to_version=new.version, diff=policy_versions.diff(old, new))

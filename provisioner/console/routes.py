"""The console's pages and form actions, from the API's app; the token is kept in an HttpOnly cookie.

The cookie is SameSite=Strict and every form carries a CSRF token (`csrf`), so another site cannot make the
browser post a form; every action checks the same scopes and experiment groups as the REST API.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from provisioner import policy_versions
from provisioner.admission import admit_spec
from provisioner.api.auth import Authenticator, Principal, get_auth
from provisioner.api.auth_config import Scope
from provisioner.api.context import ApiContext, get_context
from provisioner.api.errors import http_error, validation_message
from provisioner.budget_alerts import BudgetStatus
from provisioner.console import charts, csrf, reconciliation, views
from provisioner.demand_signal import announce
from provisioner.domain import DrainOrder, DrainReason, ResourceState
from provisioner.requests import BurstRequestSpec, RequestNotFound, cancel, view

COOKIE = "provisioner_token"
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(prefix="/console", include_in_schema=False)
CsrfField = Annotated[str, Form(alias=csrf.FIELD, max_length=200)]

PAGES = (
    ("operator", "Operations", Scope.RESOURCE_READ),
    ("experiment", "Requests", Scope.BURST_READ),
    ("finance", "Finance", Scope.REPORT_READ),
    ("policy", "Policy", Scope.POLICY_READ),
)


class LoginNeeded(Exception):
    """No usable token in the cookie: the browser is sent to the login form."""

    def __init__(self, why: str) -> None:
        self.why = why


def _user(request: Request, auth: Authenticator) -> Principal:
    try:
        return auth.authenticate(request.cookies.get(COOKIE))
    except HTTPException as exc:
        raise LoginNeeded(str(exc.detail)) from None


def console_user(request: Request, auth: Authenticator = Depends(get_auth)) -> Principal:
    return _user(request, auth)


def _form_checked(request: Request, given: str) -> None:
    """403 unless the posted form carries the session's CSRF token."""
    csrf.check(csrf.for_session(request.cookies.get(COOKIE)), given)


def _needs(who: Principal, scope: Scope) -> None:
    if not who.has(scope):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"forbidden: the token lacks scope '{scope}'")


def _alerts(context: ApiContext, who: Principal) -> list[BudgetStatus]:
    last = context.budgets.last if context.budgets is not None else []
    return [s for s in last if s.alert and who.sees(s.experiment)]


def _page(request: Request, name: str, who: Principal, context: ApiContext, **data: Any) -> HTMLResponse:
    nav = [(path, title) for path, title, scope in PAGES if who.has(scope)]
    return templates.TemplateResponse(
        request,
        f"{name}.html",
        {
            "who": who,
            "nav": nav,
            "page": name,
            "alerts": _alerts(context, who),
            "message": request.query_params.get("message"),
            "error": request.query_params.get("error"),
            "csrf": csrf.for_session(request.cookies.get(COOKIE)),
            **data,
        },
    )


def _back(page: str, *, message: str | None = None, error: str | None = None) -> RedirectResponse:
    query = f"?message={quote(message)}" if message else f"?error={quote(error)}" if error else ""
    return RedirectResponse(f"/console/{page}{query}", status_code=status.HTTP_303_SEE_OTHER)


def _login_page(request: Request, error: str | None, status_code: int = status.HTTP_200_OK) -> HTMLResponse:
    """The login form with a fresh double-submit CSRF value (cookie and hidden field)."""
    value = csrf.new_login_value()
    page = templates.TemplateResponse(
        request,
        "login.html",
        {"error": error, "nav": [], "who": None, "alerts": [], "csrf": value},
        status_code=status_code,
    )
    secure = request.url.scheme == "https"
    page.set_cookie(csrf.LOGIN_COOKIE, value, httponly=True, samesite="strict", secure=secure, path="/console")
    return page


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request, request.query_params.get("error"))


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form(max_length=16384)],
    given: CsrfField = "",
    auth: Authenticator = Depends(get_auth),
) -> Response:
    csrf.check(request.cookies.get(csrf.LOGIN_COOKIE, ""), given)
    try:
        who = auth.authenticate(token.strip())
    except HTTPException as exc:
        return _login_page(request, str(exc.detail), status.HTTP_401_UNAUTHORIZED)
    first = next((path for path, _, scope in PAGES if who.has(scope)), "operator")
    response = RedirectResponse(f"/console/{first}", status_code=status.HTTP_303_SEE_OTHER)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", secure=secure, path="/console")
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
def logout(request: Request, given: CsrfField = "") -> Response:
    _form_checked(request, given)
    response = RedirectResponse("/console/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("")
def home(who: Principal = Depends(console_user)) -> Response:
    first = next((path for path, _, scope in PAGES if who.has(scope)), None)
    if first is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "forbidden: the token has none of the console's scopes")
    return RedirectResponse(f"/console/{first}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/operator", response_class=HTMLResponse)
def operator_page(
    request: Request, who: Principal = Depends(console_user), context: ApiContext = Depends(get_context)
) -> HTMLResponse:
    _needs(who, Scope.RESOURCE_READ)
    broker = context.broker
    now = broker.clock.now()
    fleet = views.fleet(broker.db, who.experiments, now)
    allocations = views.allocations(broker.policy, now)
    return _page(
        request,
        "operator",
        who,
        context,
        now=now,
        fleet=fleet,
        fleet_chart=charts.fleet_chart(fleet),
        units=views.live_units(broker.db, who.experiments),
        decisions=views.decisions(broker.db, who.experiments),
        breakers=views.breakers(broker.db, now) if who.experiments is None else [],
        allocations=allocations,
        allocation_chart=charts.allocation_chart(allocations),
        can_drain=who.has(Scope.RESOURCE_DRAIN),
    )


@router.get("/experiment", response_class=HTMLResponse)
def experiment_page(
    request: Request, who: Principal = Depends(console_user), context: ApiContext = Depends(get_context)
) -> HTMLResponse:
    _needs(who, Scope.BURST_READ)
    broker = context.broker
    experiments = sorted(e for e in broker.policy.experiments if who.sees(e))
    return _page(
        request,
        "experiment",
        who,
        context,
        requests=views.requests(broker.db, who.experiments, broker.clock.now()),
        experiments=experiments,
        can_request=who.has(Scope.BURST_REQUEST),
        can_cancel=who.has(Scope.BURST_CANCEL),
    )


@router.get("/finance", response_class=HTMLResponse)
def finance_page(
    request: Request, who: Principal = Depends(console_user), context: ApiContext = Depends(get_context)
) -> HTMLResponse:
    _needs(who, Scope.REPORT_READ)
    statuses = [s for s in (context.budgets.last if context.budgets else []) if who.sees(s.experiment)]
    return _page(
        request,
        "finance",
        who,
        context,
        statuses=statuses,
        budget_chart=charts.budget_chart(statuses),
        reconciliation=reconciliation.month_view(context.broker.db, context.broker.clock.now(), who.experiments),
        threshold=context.budgets.threshold if context.budgets else Decimal(1),
    )


@router.get("/policy", response_class=HTMLResponse)
def policy_page(
    request: Request,
    who: Principal = Depends(console_user),
    context: ApiContext = Depends(get_context),
    compare: int | None = None,
) -> HTMLResponse:
    """The policy in force, every version (who, when, why), and what changed since an older one."""
    _needs(who, Scope.POLICY_READ)
    db = context.broker.db
    history = policy_versions.history(db, limit=50)
    current = history[0] if history else None
    older = None
    if current is not None:
        wanted = compare if compare is not None else (history[1].version if len(history) > 1 else None)
        older = policy_versions.get(db, wanted) if wanted is not None and 0 < wanted < 2**31 else None
    diff = policy_versions.diff(older, current) if older is not None and current is not None else None
    return _page(
        request, "policy", who, context, current=current, history=history, older=older, diff=diff
    )


@router.post("/requests")
def create_request(
    experiment: Annotated[str, Form(max_length=100)],
    duration_hours: Annotated[float, Form()],
    cores: Annotated[int | None, Form()] = None,
    gpus: Annotated[int | None, Form()] = None,
    given: CsrfField = "",
    *,
    request: Request,
    who: Principal = Depends(console_user),
    context: ApiContext = Depends(get_context),
    auth: Authenticator = Depends(get_auth),
) -> Response:
    _form_checked(request, given)
    _needs(who, Scope.BURST_REQUEST)
    auth.confine(who, experiment)
    fields: dict[str, Any] = {"experiment": experiment, "duration_hours": duration_hours}
    if gpus:
        fields["gpus"] = gpus
    else:
        fields["cores"] = cores
    try:
        spec = BurstRequestSpec.model_validate(fields)
    except ValidationError as exc:
        return _back("experiment", error=validation_message(exc.errors()))
    broker = context.broker
    admitted = admit_spec(broker, spec)
    if admitted.admission.accepted:  # new demand wakes the engine, as POST /v1/requests does
        anyio.from_thread.run(
            announce,
            broker.store.bus,
            broker.settings.state_dir,
            {"request_id": admitted.row.id, "experiment": spec.experiment},
        )
    verdict = "admitted" if admitted.admission.accepted else "rejected"
    return _back("experiment", message=f"request {admitted.row.id} {verdict}: {admitted.admission.reason}")


@router.post("/requests/{request_id}/cancel")
def cancel_request(
    request_id: str,
    request: Request,
    given: CsrfField = "",
    who: Principal = Depends(console_user),
    context: ApiContext = Depends(get_context),
    auth: Authenticator = Depends(get_auth),
) -> Response:
    _form_checked(request, given)
    _needs(who, Scope.BURST_CANCEL)
    try:
        auth.confine(who, view(context.broker.db, request_id).row.experiment)
        cancel(context.broker.db, request_id)
    except RequestNotFound:
        return _back("experiment", error=f"no request {request_id}")
    return _back("experiment", message=f"request {request_id} cancelled: its units will be drained")


@router.post("/resources/{resource_id}/{action}")
async def drain_or_release(
    resource_id: str,
    action: str,
    request: Request,
    given: CsrfField = "",
    who: Principal = Depends(console_user),
    context: ApiContext = Depends(get_context),
    auth: Authenticator = Depends(get_auth),
) -> Response:
    _form_checked(request, given)
    _needs(who, Scope.RESOURCE_DRAIN)
    if action not in ("drain", "release"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no action '{action}'")
    broker = context.broker
    row = broker.store.get(resource_id)
    if row is None:
        return _back("operator", error=f"no resource {resource_id}")
    auth.confine(who, row.experiment)
    if row.state not in (str(ResourceState.PROVISIONING), str(ResourceState.RUNNING), str(ResourceState.DRAINING)):
        return _back("operator", error=f"resource {resource_id} is {row.state}: nothing to {action}")
    if action == "drain":
        await broker.engine.actuator.drain([DrainOrder(resource_id, DrainReason.OPERATOR, f"asked by {who.subject}")])
    else:
        await broker.engine.actuator.release(row, f"{DrainReason.OPERATOR}: {who.subject}")
    return _back("operator", message=f"resource {resource_id}: {action} asked")


async def _to_login(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginNeeded)
    return RedirectResponse(f"/console/login?error={quote(exc.why)}", status_code=status.HTTP_303_SEE_OTHER)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith("/console"):
        return await http_error(request, exc)
    return templates.TemplateResponse(
        request,
        "denied.html",
        {
            "status_code": exc.status_code,
            "detail": exc.detail,
            "nav": [],
            "who": None,
            "alerts": [],
            "csrf": csrf.for_session(request.cookies.get(COOKIE)),
        },
        status_code=exc.status_code,
    )


def install(app: FastAPI) -> None:
    """Mount the console on `app`: its pages, and HTML (not JSON) answers for its refusals."""
    app.include_router(router)
    app.add_exception_handler(LoginNeeded, _to_login)
    app.add_exception_handler(StarletteHTTPException, _refused)

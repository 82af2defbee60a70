"""Error responses: every 4xx names the field or the thing, and the problem, in `detail`/`message`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from provisioner.catalog import InvalidFilter
from provisioner.requests import RequestNotFound


def _where(loc: Sequence[Any]) -> str:
    # ("body", "cores") -> "body.cores"; a model-level check on the body is just "body".
    return ".".join(str(part) for part in loc) or "request"


def validation_message(errors: Sequence[Any]) -> str:
    return "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)


MAX_ECHO = 200  # characters of a rejected input echoed back: a megabyte name is not sent back whole


def _clip(value: Any, depth: int = 0) -> Any:
    """The rejected input, cut to a readable size (strings, and containers a few levels deep)."""
    if isinstance(value, str) and len(value) > MAX_ECHO:
        return f"{value[:MAX_ECHO]}… ({len(value):,} characters)"
    if depth > 3:
        return "…"
    if isinstance(value, dict):
        return {_clip(k, depth + 1): _clip(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [_clip(v, depth + 1) for v in list(value)[:50]]
    return value


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{**e, "input": _clip(e["input"])} if "input" in e else e for e in exc.errors()]
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"message": validation_message(errors), "detail": jsonable_encoder(errors)},
    )


async def _invalid_filter(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidFilter)
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={
            "message": f"query.{exc.field}: {exc.problem}",
            "detail": [
                {
                    "loc": ["query", exc.field],
                    "msg": exc.problem,
                    "type": "invalid_filter",
                    "input": jsonable_encoder(exc.value),
                }
            ],
        },
    )


async def _request_not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": str(exc)})


def _leaf_routes(routes: Sequence[Any]) -> Iterator[Any]:
    for route in routes:
        nested = getattr(route, "original_router", None) or (route if isinstance(route, APIRouter) else None)
        if nested is not None:
            yield from _leaf_routes(nested.routes)
        else:
            yield route


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (the router's own 405 names only the first route's)."""
    methods: set[str] = set()
    probe = {**request.scope, "method": "__none__"}
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches(probe)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors as usual, except that a 405 lists every method the path serves in Allow."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = allowed_methods(request)
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": f"method {request.method} not allowed here; allowed: {', '.join(allowed)}"},
            headers={"Allow": ", ".join(allowed)},
        )
    return await http_exception_handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(InvalidFilter, _invalid_filter)
    app.add_exception_handler(RequestNotFound, _request_not_found)

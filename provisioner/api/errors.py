"""Error responses: every 4xx names the field or the thing, and the problem, in `detail`/`message`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from provisioner.catalog import InvalidFilter
from provisioner.requests import RequestNotFound


def _where(loc: Sequence[Any]) -> str:
    # ("body", "cores") -> "body.cores"; a model-level check on the body is just "body".
    return ".".join(str(part) for part in loc) or "request"


def validation_message(errors: Sequence[Any]) -> str:
    return "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(InvalidFilter, _invalid_filter)
    app.add_exception_handler(RequestNotFound, _request_not_found)

"""Unknown query parameters are refused: a 422 naming each one and the parameters the operation takes.

A misspelt filter (`?experment=atlas`) would otherwise be ignored and answer with every row; refusing it
also makes the API refuse every request its OpenAPI spec says is invalid (schemathesis checks that).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _known(route: APIRoute) -> frozenset[str]:
    """The query parameters `route` declares, its dependencies' included (paging, filters); a walk of a
    handful of nodes, so not cached (routes are unhashable, and an id could be reused by another app's)."""
    return frozenset(_query_names(route.dependant))


def no_unknown_query(request: Request) -> None:
    """A router dependency: 422 if the query string names a parameter the route does not declare."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _known(route)
    unknown = sorted({name for name in request.query_params if name not in known})
    if not unknown:
        return
    takes = ", ".join(sorted(known)) or "none"
    raise RequestValidationError(
        [
            {
                "type": "extra_forbidden",
                "loc": ("query", name[:100]),
                "msg": f"unknown query parameter '{name[:100]}'; this operation takes: {takes}",
                "input": request.query_params.get(name, "")[:100],
            }
            for name in unknown[:20]
        ]
    )

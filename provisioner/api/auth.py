"""Who is calling and what they may do: the bearer token → a `Principal` (scopes, experiments), and the checks.

Every refusal names what is missing: 401 when the token is absent or untrusted (and why), 403 with the
scope or the experiment's group the token lacks. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from provisioner.api.auth_config import ALL_SCOPES, AuthConfig, Scope
from provisioner.api.schemas import ErrorOut
from provisioner.api.tokens import TokenRejected, TokenValidator

bearer = HTTPBearer(
    auto_error=False,
    description="a JWT from a configured issuer (WLCG profile: `scope`, `wlcg.groups`); static tokens in development",
)

# Documented on every /v1 route, so clients (and schemathesis) know these answers.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body could not be read (not JSON, or cut short)"},
    401: {"model": ErrorOut, "description": "no bearer token, or one this service does not trust (and why)"},
    403: {"model": ErrorOut, "description": "the token lacks the scope, or the experiment's group, named"},
    413: {"model": ErrorOut, "description": "the request body is over the API's limit (1 MiB)"},
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `experiments` None: every experiment (operators, finance)."""

    subject: str
    scopes: frozenset[str]
    groups: tuple[str, ...]
    experiments: frozenset[str] | None

    def sees(self, experiment: str | None) -> bool:
        if self.experiments is None:
            return True
        return experiment is not None and experiment in self.experiments

    def has(self, scope: Scope) -> bool:
        return str(scope) in self.scopes


OPEN = Principal("anonymous (no authentication configured)", ALL_SCOPES, (), None)


def _unauthorized(why: str, *, token_given: bool = True) -> HTTPException:
    # RFC 6750: no error code when the request carried no token at all
    challenge = 'Bearer error="invalid_token"' if token_given else "Bearer"
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=f"not authenticated: {why}",
        headers={"WWW-Authenticate": challenge},
    )


class Authenticator:
    """Turns a bearer token into a `Principal` by the auth configuration."""

    def __init__(
        self,
        config: AuthConfig,
        validator: TokenValidator | None,
        *,
        operator_token: str | None = None,
    ) -> None:
        self.config = config
        self.validator = validator
        # PROVISIONER_API_TOKEN: one development token with every scope over every experiment.
        self.operator_token = operator_token.encode() if operator_token else None

    @property
    def open(self) -> bool:
        return not self.config.configured() and self.operator_token is None

    def experiments_of(self, groups: Iterable[str]) -> frozenset[str] | None:
        found: set[str] = set()
        for group in groups:
            grant = self.config.groups.get(group)
            if grant is None:
                continue
            if grant.all_experiments:
                return None
            if grant.experiment is not None:
                found.add(grant.experiment)
        return frozenset(found)

    def group_for(self, experiment: str) -> str | None:
        return next((g for g, grant in self.config.groups.items() if grant.experiment == experiment), None)

    def authenticate(self, token: str | None) -> Principal:
        if self.open:
            return OPEN
        if not token:
            raise _unauthorized("send 'Authorization: Bearer <token>'", token_given=False)
        given = token.encode()
        if self.operator_token is not None and hmac.compare_digest(given, self.operator_token):
            return Principal("operator (PROVISIONER_API_TOKEN)", ALL_SCOPES, (), None)
        for static in self.config.static_tokens:
            if hmac.compare_digest(given, static.token.get_secret_value().encode()):
                groups = tuple(static.groups)
                return Principal(
                    static.subject, frozenset(str(s) for s in static.scopes), groups, self.experiments_of(groups)
                )
        if self.validator is None:
            raise _unauthorized("the token is not one this service knows")
        try:
            claims = self.validator.validate(token)
        except TokenRejected as exc:
            raise _unauthorized(str(exc)) from None
        return Principal(claims.subject, claims.scopes, claims.groups, self.experiments_of(claims.groups))

    def confine(self, principal: Principal, experiment: str | None) -> None:
        """403 unless the caller may act for `experiment`, naming the group that would grant it."""
        if principal.sees(experiment):
            return
        group = self.group_for(experiment) if experiment else None
        needs = f"group '{group}'" if group else "a group mapped to it in the auth configuration"
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=(
                f"forbidden: experiment '{experiment}' needs {needs}; "
                f"the token's groups are {list(principal.groups)}"
            ),
        )


def get_auth(request: Request) -> Authenticator:
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:
        raise RuntimeError("the API is not started: authentication is set up in the app's lifespan")
    return auth


def operators_only(auth: Authenticator, who: Principal, what: str) -> None:
    """403 unless the caller sees every experiment (`what` spans them all)."""
    if who.experiments is None:
        return
    wide = [g for g, grant in auth.config.groups.items() if grant.all_experiments]
    raise HTTPException(
        status_code=status.HTTP_403_FORBIDDEN,
        detail=f"forbidden: {what} span every experiment; needs one of the groups {wide}; "
        f"the token's groups are {list(who.groups)}",
    )


def token_of(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def missing_scope(scope: Scope) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_403_FORBIDDEN,
        detail=f"forbidden: the token lacks scope '{scope}'",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
    )


def require(scope: Scope, *others: Scope) -> Callable[..., Principal]:
    """A dependency: the caller, who must hold `scope` (or one of `others`).

    A sync function on purpose: FastAPI runs it in a thread, so a JWKS read never blocks the event loop."""

    def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
        auth: Authenticator = Depends(get_auth),
    ) -> Principal:
        principal = auth.authenticate(token_of(request, credentials))
        if not any(principal.has(s) for s in (scope, *others)):
            raise missing_scope(scope)
        return principal

    return check

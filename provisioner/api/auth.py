"""The operators' bearer-token check for /v1 (constant-time comparison; the token is never logged)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="PROVISIONER_API_TOKEN, when the server sets one")


def bearer_guard(token: str | None) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[None]]:
    """A dependency that lets every call through when `token` is None, else only the right bearer token."""
    expected = token.encode() if token is not None else None

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if credentials is None or not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token: send 'Authorization: Bearer <PROVISIONER_API_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check

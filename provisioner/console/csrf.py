"""CSRF tokens for the console's forms: every form carries one, and a post without the right one is refused.

After login the form token is an HMAC of the session's bearer token (kept in the HttpOnly cookie), so it
needs no server state and is the same on every replica; a page on another site can read neither. The login
form itself, before any session, uses a double-submit cookie: a random value set when the form is shown
and echoed by the form. The cookies are also SameSite=Strict; this is the second, independent guard.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import HTTPException, status

FIELD = "csrf"
LOGIN_COOKIE = "provisioner_login_csrf"
_PURPOSE = b"provisioner console form v1"


def for_session(session_token: str | None) -> str:
    """The form token of a session ('' without one: no form of a logged-out page can be posted)."""
    if not session_token:
        return ""
    return hmac.new(session_token.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def new_login_value() -> str:
    return secrets.token_urlsafe(32)


def refused(why: str) -> HTTPException:
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"forbidden: the form's CSRF token {why}; reload the page and submit it again",
    )


def check(expected: str, given: str) -> None:
    """403 unless the form echoed `expected` (compared in constant time)."""
    if not given:
        raise refused("is missing")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise refused("does not match this session")

"""Bearer JWT validation against the configured issuers: OIDC discovery, cached JWKS with key rotation, claims.

Checks the signature (public-key algorithms only: `alg: none` and HMAC are refused), the issuer, the
audience, `exp` and `nbf` against the injected clock, and reads the WLCG Common JWT profile's `scope`
(space-separated) and `wlcg.groups` claims.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from provisioner.api.auth_config import AuthConfig, IssuerConfig
from provisioner.clock import Clock

# A token naming a key id we do not know makes us re-read the issuer's keys (rotation), but not more often.
MIN_REFRESH = timedelta(seconds=10)


class TokenRejected(Exception):
    """The token cannot be trusted; the message says why (never the token itself)."""


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    issuer: str
    scopes: frozenset[str]
    groups: tuple[str, ...]


@dataclass
class _Keys:
    by_kid: dict[str, PyJWK] = field(default_factory=dict)
    fetched_at: datetime | None = None


class JwksCache:
    """One issuer's signing keys: read by OIDC discovery (or the configured `jwks_uri`), cached, re-read
    when stale or when a token names a key id not seen yet (the issuer rotated its keys)."""

    def __init__(self, issuer: IssuerConfig, clock: Clock, http: httpx.Client, ttl: timedelta) -> None:
        self.issuer = issuer
        self.clock = clock
        self.http = http
        self.ttl = ttl
        self._keys = _Keys()
        self._jwks_uri = issuer.jwks_uri
        self._lock = threading.Lock()

    def _get_json(self, url: str) -> Any:
        try:
            response = self.http.get(url)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TokenRejected(
                f"cannot read the signing keys of issuer {self.issuer.issuer}: {type(exc).__name__}"
            ) from None

    def _uri(self) -> str:
        if self._jwks_uri is None:
            base = self.issuer.issuer.rstrip("/")
            document = self._get_json(f"{base}/.well-known/openid-configuration")
            uri = document.get("jwks_uri") if isinstance(document, dict) else None
            if not isinstance(uri, str):
                raise TokenRejected(f"issuer {self.issuer.issuer}: its discovery document has no jwks_uri")
            self._jwks_uri = uri
        return self._jwks_uri

    def _refresh(self, now: datetime) -> None:
        try:
            keyset = PyJWKSet.from_dict(self._get_json(self._uri()))
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"issuer {self.issuer.issuer}: unusable key set ({exc})") from None
        self._keys = _Keys({k.key_id: k for k in keyset.keys if k.key_id}, now)

    def key(self, kid: str | None) -> PyJWK:
        with self._lock:
            now = self.clock.now()
            fetched = self._keys.fetched_at
            stale = fetched is None or now - fetched >= self.ttl
            unknown = kid not in self._keys.by_kid
            if stale or (unknown and (fetched is None or now - fetched >= MIN_REFRESH)):
                self._refresh(now)
            if kid is None:
                if len(self._keys.by_kid) == 1:
                    return next(iter(self._keys.by_kid.values()))
                raise TokenRejected("the token names no key id (kid) and the issuer has several keys")
            found = self._keys.by_kid.get(kid)
            if found is None:
                raise TokenRejected(f"issuer {self.issuer.issuer} has no signing key '{kid}'")
            return found


def _scopes(claim: Any) -> frozenset[str]:
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list):
        return frozenset(str(s) for s in claim)
    return frozenset()


def _groups(claim: Any) -> tuple[str, ...]:
    if isinstance(claim, list):
        return tuple(str(g) for g in claim)
    if isinstance(claim, str):
        return tuple(claim.split(","))
    return ()


def _epoch(claims: dict[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TokenRejected(f"claim '{name}' is not a number of seconds")
    return datetime.fromtimestamp(value, UTC)


class TokenValidator:
    """Validates bearer JWTs against every configured issuer; thread-safe (routes run in a thread pool)."""

    def __init__(self, config: AuthConfig, clock: Clock, http: httpx.Client | None = None) -> None:
        self.config = config
        self.clock = clock
        self.http = http or httpx.Client(timeout=10, follow_redirects=False)
        ttl = timedelta(seconds=config.jwks_cache_seconds)
        self.caches = {i.issuer: JwksCache(i, clock, self.http, ttl) for i in config.issuers}

    def close(self) -> None:
        self.http.close()

    def validate(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("not a JWT") from None
        iss = unverified.get("iss")
        issuer = self.config.issuer(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenRejected(f"issuer {iss!r} is not trusted by this service")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise TokenRejected(f"algorithm {alg!r} is not accepted (allowed: {', '.join(issuer.algorithms)})")
        key = self.caches[issuer.issuer].key(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,  # the key's own algorithm must match the header's
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                options={
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud", "sub"],
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"wrong audience: this service is '{issuer.audience}'") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected(f"algorithm {alg!r} does not match the signing key's") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("the signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        now = self.clock.now()
        leeway = timedelta(seconds=self.config.leeway_seconds)
        exp = _epoch(claims, "exp")
        if exp is None or now >= exp + leeway:
            raise TokenRejected(f"the token expired at {exp.isoformat() if exp else '?'}")
        nbf = _epoch(claims, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise TokenRejected(f"the token is not valid before {nbf.isoformat()}")
        return TokenClaims(
            subject=str(claims["sub"]),
            issuer=issuer.issuer,
            scopes=_scopes(claims.get("scope", claims.get("scp"))),
            groups=_groups(claims.get("wlcg.groups")),
        )

"""A test token issuer: OIDC discovery and a JWKS served over HTTP on loopback, and tokens minted with its keys."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from provisioner.api.auth_config import AuthConfig, GroupGrant, IssuerConfig

AUDIENCE = "https://provisioner.test"
NOW = datetime.fromisoformat("2026-03-10T12:00:00+00:00")  # the broker's (simulated) clock in these tests


class TestIssuer:
    """An issuer like INDIGO IAM: `/.well-known/openid-configuration` → `jwks_uri` → the public keys."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []  # kids the JWKS lists now
        self.jwks_reads = 0
        self.add_key("k1")
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.jwks_reads += 1
                    body = {"keys": [issuer.public_jwk(kid) for kid in issuer.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published.append(kid)

    def rotate(self, kid: str) -> None:
        """A new key replaces every old one in the JWKS."""
        self.add_key(kid)
        self.published = [kid]

    def public_jwk(self, kid: str) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
        return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}

    def mint(
        self,
        *,
        scopes: str = "burst:read",
        groups: list[str] | None = None,
        kid: str = "k1",
        issuer: str | None = None,
        audience: str = AUDIENCE,
        expires: datetime | None = None,
        not_before: datetime | None = None,
        subject: str = "alice",
        **extra: Any,
    ) -> str:
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "sub": subject,
            "aud": audience,
            "iat": int(NOW.timestamp()),
            "exp": int((expires or NOW + timedelta(hours=1)).timestamp()),
            "scope": scopes,
            "wlcg.ver": "1.0",
            "wlcg.groups": groups if groups is not None else ["/atlas"],
            **extra,
        }
        if not_before is not None:
            claims["nbf"] = int(not_before.timestamp())
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def config(self) -> AuthConfig:
        return AuthConfig(
            issuers=[IssuerConfig(issuer=self.url, audience=AUDIENCE)],
            groups={
                "/atlas": GroupGrant(experiment="atlas"),
                "/lsst": GroupGrant(experiment="lsst"),
                "/facility/operators": GroupGrant(all_experiments=True),
                "/facility/finance": GroupGrant(all_experiments=True),
            },
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_issuer() -> Iterator[TestIssuer]:
    issuer = TestIssuer()
    try:
        yield issuer
    finally:
        issuer.stop()


test_issuer.__test__ = False  # type: ignore[attr-defined]

"""Who may call the API: trusted token issuers, the group → experiment mapping, development-only static tokens.

Read from the TOML file PROVISIONER_API_AUTH_FILE names; a typo in it is an error at start-up
(`extra = "forbid"`), never a silently open server.

```toml
[[issuers]]
issuer = "https://wlcg.cloud.cnaf.infn.it/"   # OIDC discovery at <issuer>/.well-known/openid-configuration
audience = "https://provisioner.example.org"

[groups."/atlas"]
experiment = "atlas"            # members act for ATLAS: see and change only ATLAS's requests and resources
[groups."/facility/operators"]
all_experiments = true          # operators (and finance) see every experiment; scopes say what they may do
```
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator


class Scope(StrEnum):
    """The WLCG-profile `scope` values the API understands; each route names the one it needs."""

    BURST_REQUEST = "burst:request"
    BURST_READ = "burst:read"
    BURST_CANCEL = "burst:cancel"
    POLICY_READ = "policy:read"
    POLICY_WRITE = "policy:write"
    RESOURCE_READ = "resource:read"
    RESOURCE_DRAIN = "resource:drain"
    RESOURCE_HEARTBEAT = "resource:heartbeat"  # what a pilot/worker token holds: report busy/idle
    REPORT_READ = "report:read"


ALL_SCOPES = frozenset(str(s) for s in Scope)


class IssuerConfig(BaseModel):
    """One trusted token issuer (INDIGO IAM, CILogon...) and the audience its tokens must name."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1, description="the exact `iss` claim")
    audience: str = Field(min_length=1, description="the `aud` claim a token for this service carries")
    jwks_uri: str | None = Field(
        default=None, description="where the signing keys are; default: from OIDC discovery"
    )
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"])

    @model_validator(mode="after")
    def _no_unsigned(self) -> IssuerConfig:
        if any(a.lower() == "none" or a.upper().startswith("HS") for a in self.algorithms):
            raise ValueError("algorithms: only public-key signatures (RS*, ES*, PS*, EdDSA) are accepted")
        return self


class GroupGrant(BaseModel):
    """What membership of one `wlcg.groups` group grants."""

    model_config = ConfigDict(extra="forbid")

    experiment: str | None = Field(default=None, description="the experiment this group's members act for")
    all_experiments: bool = Field(default=False, description="operators and finance: every experiment")

    @model_validator(mode="after")
    def _one_kind(self) -> GroupGrant:
        if (self.experiment is None) == (not self.all_experiments):
            raise ValueError("give either experiment = \"<name>\" or all_experiments = true")
        return self


class StaticToken(BaseModel):
    """A fixed token for development on loopback: `serve` refuses to listen beyond loopback with only these."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr
    subject: str = "static"
    scopes: list[Scope] = Field(default_factory=lambda: list(Scope))
    groups: list[str] = Field(default_factory=list)


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuers: list[IssuerConfig] = Field(default_factory=list)
    groups: dict[str, GroupGrant] = Field(default_factory=dict)
    static_tokens: list[StaticToken] = Field(default_factory=list)
    jwks_cache_seconds: float = Field(default=300, gt=0, description="keys are re-read at least this often")
    leeway_seconds: float = Field(default=30, ge=0, le=300, description="clock skew allowed on exp/nbf")

    def configured(self) -> bool:
        """Whether any authentication is set up (else the API is open: loopback development only)."""
        return bool(self.issuers or self.static_tokens)

    def issuer(self, iss: str) -> IssuerConfig | None:
        return next((i for i in self.issuers if i.issuer == iss), None)


class AuthConfigError(ValueError):
    """The auth file cannot be used; the message names the file and the key."""


def load_auth_config(path: Path) -> AuthConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AuthConfigError(f"{path}: {exc}") from None
    try:
        return AuthConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise AuthConfigError(f"{path}: {problems}") from None

"""What every route works with: the broker, a catalog over all its offerings, the metrics, the API settings."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from fastapi import Request
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from provisioner.api.auth_config import AuthConfig, load_auth_config
from provisioner.broker import Broker
from provisioner.budget_alerts import BudgetAlerter
from provisioner.catalog import Catalog
from provisioner.metrics import BrokerMetrics


class ApiSettings(BaseSettings):
    """PROVISIONER_API_AUTH_FILE: trusted issuers, group → experiment mapping (see `auth_config`).
    PROVISIONER_API_TOKEN: one static operator token, for development on loopback.
    Neither set: the API is open, and `serve` refuses to listen beyond loopback."""

    model_config = SettingsConfigDict(env_prefix="PROVISIONER_API_", extra="ignore")

    token: SecretStr | None = None
    auth_file: Path | None = None
    auth: AuthConfig | None = None  # given directly (tests); else read from auth_file
    budget_check_seconds: float = Field(300, ge=0, description="how often forecasts are checked; 0: never")
    budget_alert_threshold: Decimal = Field(
        Decimal("1.0"), gt=0, description="alert when the month-end forecast passes this share of the budget"
    )

    def required_token(self) -> str | None:
        value = self.token.get_secret_value() if self.token is not None else ""
        return value or None  # an empty variable means no token, not "the empty token"

    def auth_config(self) -> AuthConfig:
        if self.auth is not None:
            return self.auth
        if self.auth_file is not None and str(self.auth_file):
            return load_auth_config(self.auth_file)
        return AuthConfig()

    def authentication_configured(self) -> bool:
        return self.required_token() is not None or self.auth_config().configured()

    def issuers_configured(self) -> bool:
        return bool(self.auth_config().issuers)


@dataclass
class ApiContext:
    broker: Broker
    offerings: Catalog  # the bundled catalog plus the policy's site offerings (HPC, backfill)
    metrics: BrokerMetrics
    budgets: BudgetAlerter | None = None  # month-end forecasts against budgets, and their alerts


def get_context(request: Request) -> ApiContext:
    context: ApiContext | None = getattr(request.app.state, "context", None)
    if context is None:
        raise RuntimeError("the API is not started: the broker is built in the app's lifespan")
    return context

"""What every route works with: the broker, a catalog over all its offerings, the metrics, the API settings."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from provisioner.broker import Broker
from provisioner.catalog import Catalog
from provisioner.metrics import BrokerMetrics


class ApiSettings(BaseSettings):
    """PROVISIONER_API_TOKEN: when set, every /v1 call needs `Authorization: Bearer <token>`."""

    model_config = SettingsConfigDict(env_prefix="PROVISIONER_API_", extra="ignore")

    token: SecretStr | None = None

    def required_token(self) -> str | None:
        value = self.token.get_secret_value() if self.token is not None else ""
        return value or None  # an empty variable means no token, not "the empty token"


@dataclass
class ApiContext:
    broker: Broker
    offerings: Catalog  # the bundled catalog plus the policy's site offerings (HPC, backfill)
    metrics: BrokerMetrics


def get_context(request: Request) -> ApiContext:
    context: ApiContext | None = getattr(request.app.state, "context", None)
    if context is None:
        raise RuntimeError("the API is not started: the broker is built in the app's lifespan")
    return context

"""Run-time configuration from the environment (PROVISIONER_*) with embedded defaults.

Defaults need no set-up at all: a SQLite file in the state directory, the in-process bus,
simulated backends and the bundled catalog.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROVISIONER_", extra="forbid")

    state_dir: Path = Field(default=Path(".provisioner"), description="where the SQLite file and queues live")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in state_dir")
    broker_id: str = Field(default="broker-local", description="tag written on every resource we create")
    mqtt_url: str | None = Field(default=None, description="mqtt://host:port; none: in-process bus")
    policy_file: Path | None = None
    backends_file: Path | None = Field(default=None, description="TOML file configuring real backends")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.state_dir / 'provisioner.db').resolve()}"


def load_settings() -> Settings:
    return Settings()

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
    batch_idle_seconds: float = Field(
        default=0.25, gt=0, le=60, description="new demand: plan once it has been quiet this long"
    )
    batch_max_seconds: float = Field(default=5.0, gt=0, le=600, description="...or after this long at most")
    leader_lease_seconds: float = Field(
        default=15.0, gt=0.5, le=600, description="replicas: a leader silent this long is deposed"
    )
    standby_poll_seconds: float = Field(
        default=2.0, gt=0.05, le=600, description="replicas: how often a stand-by tries to take over"
    )
    demand_topics: list[str] = Field(
        default_factory=list,
        description="absolute MQTT topics whose messages are new demand (JSON list), e.g. a storage "
        "system's file-arrival events",
    )
    planner_workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="processes the planner splits each round's costing over (workers from a fork "
        "server; 1: the broker's own process only)",
    )
    usage_dir: Path | None = Field(
        default=None,
        description="columnar store of imported usage files (Parquet); default state_dir/usage. "
        "Replicas that publish APEL must share it.",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.state_dir / 'provisioner.db').resolve()}"

    def resolved_usage_dir(self) -> Path:
        return self.usage_dir or self.state_dir / "usage"


def load_settings() -> Settings:
    return Settings()

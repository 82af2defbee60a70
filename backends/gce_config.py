"""Configuration of one GCE project for the GCE backend, validated at start-up (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from provisioner.domain import Arch


def _default_images() -> dict[Arch, str]:
    return {
        Arch.X86_64: "projects/debian-cloud/global/images/family/debian-12",
        Arch.ARM64: "projects/debian-cloud/global/images/family/debian-12-arm64",
    }


def _default_disk_types() -> dict[str, str]:
    # These families boot only from Hyperdisk.
    return {family: "hyperdisk-balanced" for family in ("c4", "c4a", "c4d", "n4", "n4a", "a4", "a4x")}


class GceConfig(BaseModel):
    """One GCE project the broker may create VMs in."""

    model_config = ConfigDict(extra="forbid")

    name: str = "gce"
    project: str
    zones: list[str] = Field(min_length=1)
    images: dict[Arch, str] = Field(default_factory=_default_images)
    network: str = "global/networks/default"
    subnetwork: str | None = None
    boot_disk_gb: int = Field(default=50, ge=10)
    boot_disk_type: str = "pd-balanced"
    boot_disk_type_by_family: dict[str, str] = Field(default_factory=_default_disk_types)
    vm_service_account: str | None = None  # the e-mail the VM runs as, not the broker's credentials
    startup_script: str | None = None
    credentials_file: Path | None = None  # service-account JSON; None: Application Default Credentials
    api_endpoint: str | None = None  # emulators and tests only
    anonymous: bool = False  # tests only: send no credentials (needs api_endpoint)
    name_prefix: str = Field(default="prov", pattern=r"^[a-z][a-z0-9-]{0,9}$")
    max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=1.0, ge=0)
    retry_max_seconds: float = Field(default=30.0, ge=0)
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    operation_timeout_seconds: float = Field(default=300.0, gt=0)
    poll_interval_seconds: float = Field(default=2.0, ge=0)
    page_size: int = Field(default=500, ge=1, le=500)
    # Egress: each VM's bytes out from Cloud Monitoring (instance/network/sent_bytes_count) for the
    # ledger and the planner's egress caps and tiers; it counts in-region traffic too (an upper bound
    # on billed egress). Read at most every `egress_refresh_seconds` (one timeSeries.list per project).
    egress_metrics: bool = True
    egress_refresh_seconds: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    monitoring_endpoint: str | None = None  # emulators and tests only; default monitoring.googleapis.com

    @model_validator(mode="after")
    def _anonymous_needs_endpoint(self) -> GceConfig:
        if self.anonymous and not self.api_endpoint:
            raise ValueError("anonymous: only allowed together with api_endpoint (an emulator)")
        return self

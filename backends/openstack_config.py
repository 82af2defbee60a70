"""Configuration of one OpenStack project for the OpenStack backend, validated at start-up."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from provisioner.domain import Arch


class FlavorPricing(BaseModel):
    """What the config says about one flavour, since OpenStack itself knows no price."""

    model_config = ConfigDict(extra="forbid")

    price_per_hour: Decimal = Field(ge=0)
    hs23_per_core: float = Field(gt=0)
    arch: Arch = Arch.X86_64
    gpu_model: str | None = None
    gpu_count: int = Field(default=0, ge=0)
    interruption_rate_per_hour: float = Field(default=0.0, ge=0)


class OpenStackConfig(BaseModel):
    """One OpenStack project the broker may create servers in."""

    model_config = ConfigDict(extra="forbid")

    name: str = "openstack"
    auth_url: str  # Keystone root, e.g. https://keystone.example.org:5000
    username: str
    password: SecretStr
    project_name: str
    user_domain_name: str = "Default"
    project_domain_id: str = "default"
    region: str = "RegionOne"
    compute_url: str | None = None  # override the catalog's Nova endpoint
    image_url: str | None = None  # override the catalog's Glance endpoint
    images: dict[Arch, str]  # image name or id per architecture
    flavors: dict[str, FlavorPricing] = Field(min_length=1)  # flavour name -> price; others are not offered
    key_name: str | None = None
    network_ids: list[str] = Field(default_factory=list)
    availability_zone: str | None = None
    user_data: str | None = None
    name_prefix: str = Field(default="prov", pattern=r"^[a-z][a-z0-9-]{0,9}$")
    startup_seconds: int = Field(default=180, ge=0)
    max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=1.0, ge=0)
    retry_max_seconds: float = Field(default=30.0, ge=0)
    request_timeout_seconds: int = Field(default=30, gt=0)
    build_wait_seconds: float = Field(default=120.0, ge=0)  # wait for ACTIVE/ERROR; PENDING after that
    poll_interval_seconds: float = Field(default=3.0, ge=0)

"""Configuration of one AWS EC2 backend: regions, images per architecture, network, credentials source."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LaunchTemplateRef(BaseModel):
    """An EC2 launch template by id or by name; `version` may be "$Latest", "$Default" or a number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    name: str | None = None
    version: str = "$Default"

    @model_validator(mode="after")
    def _one_of_id_or_name(self) -> LaunchTemplateRef:
        if (self.id is None) == (self.name is None):
            raise ValueError("launch template: give exactly one of `id` or `name`")
        return self


class ImageChoice(BaseModel):
    """What to boot for each architecture, and for GPU offerings (which need driver images)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x86_64: str | None = Field(default=None, description="AMI id for x86_64 CPU offerings")
    arm64: str | None = Field(default=None, description="AMI id for arm64 (Graviton) CPU offerings")
    gpu_x86_64: str | None = Field(default=None, description="AMI id for x86_64 GPU offerings")
    gpu_arm64: str | None = Field(default=None, description="AMI id for arm64 GPU offerings (g5g)")


class LaunchTemplates(BaseModel):
    """Launch templates per architecture; an AMI in `images` for the same key overrides the template's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x86_64: LaunchTemplateRef | None = None
    arm64: LaunchTemplateRef | None = None
    gpu_x86_64: LaunchTemplateRef | None = None
    gpu_arm64: LaunchTemplateRef | None = None


class AwsRegionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str = Field(min_length=1)
    images: ImageChoice = ImageChoice()
    launch_templates: LaunchTemplates = LaunchTemplates()
    subnet_ids: dict[str, str] = Field(
        default_factory=dict, description="availability zone -> subnet id; none: the default VPC"
    )
    security_group_ids: list[str] = Field(default_factory=list)


class AwsConfig(BaseModel):
    """One AWS account as a backend. Credentials come from boto3's chain, or the named profile/file.

    Keys are never part of this model, so they cannot end up in a config dump or a log line.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="aws", description="backend name; offerings carry it in `backend`")
    broker_id: str = Field(min_length=1, description="value of the broker tag on every instance")
    regions: list[AwsRegionConfig] = Field(min_length=1)
    key_name: str | None = None
    profile: str | None = Field(default=None, description="profile in the shared credentials/config file")
    credentials_file: Path | None = Field(default=None, description="shared credentials file to read")
    endpoint_url: str | None = Field(default=None, description="EC2 endpoint override (moto in tests)")
    user_data: str | None = Field(default=None, description="cloud-init for pilots; never logged")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20, description="tries for throttled/timed-out calls")
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=20.0, ge=0)
    page_size: int = Field(default=1000, ge=5, le=1000, description="MaxResults of describe calls")
    cpu_busy_percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="busy signal from CloudWatch: a running VM whose average CPU over the last "
        "`cpu_window_minutes` reaches this is busy, below it idle; none: no CPU signal (one "
        "GetMetricData call per 500 running instances and region)",
    )
    cpu_window_minutes: int = Field(default=10, ge=5, le=120, description="CloudWatch look-back for busy")
    egress_metrics: bool = Field(
        default=True,
        description="measure each instance's bytes out from CloudWatch (AWS/EC2 NetworkOut, summed since "
        "launch) for the ledger and the planner's egress caps and tiers; NetworkOut counts every byte "
        "out, in-region too, so it is an upper bound on billed egress",
    )
    egress_refresh_s: float = Field(
        default=300.0,
        ge=0,
        allow_inf_nan=False,
        description="re-read NetworkOut at most this often per region (EC2's basic monitoring has one "
        "datapoint per 5 minutes; GetMetricData is billed per metric read)",
    )
    watch_scheduled_events: bool = Field(
        default=True, description="also read scheduled retirement/stop events (one more call per region)"
    )

    @model_validator(mode="after")
    def _regions_unique(self) -> AwsConfig:
        names = [r.region for r in self.regions]
        if len(set(names)) != len(names):
            raise ValueError(f"regions: listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        return self

    def region(self, name: str) -> AwsRegionConfig | None:
        return next((r for r in self.regions if r.region == name), None)

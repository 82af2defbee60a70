"""The policy file's shape as pydantic models: every table forbids unknown keys, every number has its range."""

from __future__ import annotations

import enum
import itertools
import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from provisioner.domain import Arch, Market, Pacing

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # no ':' or '/': those separate ids and periods
LOCATION_PATTERN = r"^[a-z0-9-]+:[A-Za-z0-9_.-]+$"  # "<provider>:<region>", e.g. "aws:us-east-1", "site:desy"
FAMILY_PATTERN = r"^[a-z0-9-]+:[A-Za-z0-9_.-]+$"  # "<provider>:<family>", e.g. "aws:p5", "slurm:maxwell"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
Location = Annotated[str, Field(pattern=LOCATION_PATTERN)]
Family = Annotated[str, Field(pattern=FAMILY_PATTERN)]
Usd = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Gigabytes = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


# GPU models compare case-insensitively: stored upper-case, as the bundled catalog spells them ("A100-80GB")
GpuModel = Annotated[str, BeforeValidator(_upper), Field(min_length=1)]


RELATIVE_DATE = re.compile(r"^today(?:([+-])(\d{1,5})d)?$")
RELATIVE_DATE_MEANING = "a TOML date or date-time, or \"today\", \"today+Nd\" or \"today-Nd\""


def _date_to_midnight_utc(value: Any, info: ValidationInfo) -> Any:
    # TOML has a plain date type; a date on its own means the start of that day in UTC.
    if isinstance(value, str) and (match := RELATIVE_DATE.match(value.strip())):
        # Relative to the day the policy is read (examples and tests that must not expire); the
        # loader passes that day, so reading the file never looks at the wall clock itself.
        today = (info.context or {}).get("today")
        if not isinstance(today, date):
            raise ValueError("a relative date needs the day the policy is read, and none was given")
        sign, days = match.groups()
        value = today + timedelta(days=(-1 if sign == "-" else 1) * int(days or 0))
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time(0), tzinfo=UTC)
    return value


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_date_to_midnight_utc), AfterValidator(_as_utc)]


class BudgetPeriod(enum.StrEnum):
    MONTHLY = "monthly"
    WEEKLY = "weekly"
    DAILY = "daily"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budgets(_Table):
    """USD an experiment may spend per calendar period (UTC); each one set is enforced."""

    monthly: Usd | None = None
    weekly: Usd | None = None
    daily: Usd | None = None

    def by_period(self) -> dict[BudgetPeriod, Decimal]:
        return {p: v for p in BudgetPeriod if (v := getattr(self, p.value)) is not None}


class EgressCaps(_Table):
    """GB an experiment's work may move out of where it runs, per calendar period (UTC)."""

    monthly: Gigabytes | None = None
    weekly: Gigabytes | None = None
    daily: Gigabytes | None = None

    def by_period(self) -> dict[BudgetPeriod, float]:
        return {p: v for p in BudgetPeriod if (v := getattr(self, p.value)) is not None}


class GpuRules(_Table):
    models: tuple[GpuModel, ...] | None = None  # None: any model
    max_gpus: Annotated[int, Field(ge=0)] | None = None  # at once; None: no limit, 0: no GPUs


class ExperimentPolicy(_Table):
    budgets: Budgets = Budgets()
    spend_rate_cap_per_hour: Usd | None = None
    backends: tuple[Name, ...] | None = None  # None: any configured backend
    markets: tuple[Market, ...] | None = None
    archs: tuple[Arch, ...] | None = None
    gpu: GpuRules = GpuRules()
    share: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    egress_cap_gb: EgressCaps = EgressCaps()
    datasets: tuple[Name, ...] = ()  # names declared in [facility.data_locations]


class EgressTierModel(_Table):
    up_to_gb: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None  # omitted: no upper edge
    usd_per_gb: Usd


class EgressRouteModel(_Table):
    source: Location
    destination: Annotated[str, Field(pattern=r"^(\*|[a-z0-9-]+:[A-Za-z0-9_.-]+)$")]  # "*": anywhere else
    tiers: Annotated[tuple[EgressTierModel, ...], Field(min_length=1)]

    @field_validator("tiers")
    @classmethod
    def _tiers_ascend_and_end_open(cls, tiers: tuple[EgressTierModel, ...]) -> tuple[EgressTierModel, ...]:
        edges = [t.up_to_gb for t in tiers]
        if any(e is None for e in edges[:-1]):
            raise ValueError("only the last tier may omit up_to_gb")
        if edges[-1] is not None:
            raise ValueError(
                f"the last tier must omit up_to_gb (no upper edge); GB beyond {edges[-1]:g} would have no price"
            )
        bounded = [e for e in edges if e is not None]
        if any(b <= a for a, b in itertools.pairwise(bounded)):
            raise ValueError(f"up_to_gb must increase from tier to tier, got {bounded}")
        return tiers


class CircuitBreaker(_Table):
    failures_before_trip: Annotated[int, Field(ge=1)] = 3
    cool_off_minutes: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 30.0


class Timeouts(_Table):
    boot_timeout_minutes: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 20.0  # never joined: failed
    idle_drain_minutes: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 15.0  # idle this long: drain


class Facility(_Table):
    spend_rate_cap_per_hour: Usd | None = None
    horizon_hours: Annotated[float, Field(gt=0, le=24 * 31, allow_inf_nan=False)] = 24.0
    # what an allocation hour displaces when no cloud offering is known to price it against
    reference_usd_per_hs23_hour: Usd = Decimal("0.003")
    reference_usd_per_gpu_hour: Usd = Decimal("2.50")
    quotas: dict[Family, Annotated[int, Field(ge=0)]] = {}  # family -> max cores at once
    egress_routes: tuple[EgressRouteModel, ...] = ()
    data_locations: dict[Name, Location] = {}  # dataset -> where it is
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    timeouts: Timeouts = Timeouts()


class NodeShape(_Table):
    name: Name
    cores: Annotated[int, Field(gt=0)]
    memory_gb: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    arch: Arch = Arch.X86_64
    hs23_per_core: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    gpu_model: GpuModel | None = None
    gpu_count: Annotated[int, Field(ge=0)] = 0


class AllocationPolicy(_Table):
    backend: Name
    site: Name | None = None  # where the machine is, for data locality; default: the backend name
    account: Annotated[str, Field(min_length=1)]
    partition: Name
    qos: Annotated[str, Field(min_length=1)] | None = None
    node: NodeShape
    node_hours_granted: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    node_hours_used: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0  # at the time of writing
    starts: UtcDatetime
    ends: UtcDatetime
    pacing: Pacing = Pacing.EVEN
    pace_tolerance: Annotated[float, Field(gt=0, le=1)] = 0.05  # fraction of the grant
    max_walltime_hours: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    max_nodes: Annotated[int, Field(gt=0)]
    startup_seconds: Annotated[int, Field(ge=0)] = 300


class BackfillPool(_Table):
    backend: Name
    site: Name | None = None
    partition: Name
    node: NodeShape
    max_nodes: Annotated[int, Field(gt=0)]
    eviction_rate_per_hour: Annotated[float, Field(ge=0, le=1)]  # chance per hour a node is taken back
    max_walltime_hours: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    startup_seconds: Annotated[int, Field(ge=0)] = 300


class EndMarker(_Table):
    """The `[end]` table that closes a policy file: a file cut short (a half-finished save) has none."""


class Policy(_Table):
    """One facility's whole policy file, validated.

    Fails closed: an experiment not in `experiments` gets nothing, a file naming no experiment is
    refused, and a file without its closing `[end]` table is refused as possibly truncated.
    """

    version: Literal[1] = 1
    facility: Facility = Facility()
    experiments: dict[Name, ExperimentPolicy] = {}
    allocations: dict[Name, AllocationPolicy] = {}
    backfill: dict[Name, BackfillPool] = {}
    end: EndMarker | None = None  # required; None only so its absence is reported with the other problems

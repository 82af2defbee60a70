"""The one interface every resource kind implements, and the errors a backend may raise.

A backend turns a recorded intent into capacity and back: `provision` is idempotent on the
request's token (EC2 ClientToken, GCE requestId, a Slurm job comment...), `list_resources`
returns everything carrying this broker's tag so a crash never loses a resource, and
`release` is safe to call twice.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from backends.quota import QuotaScope
from provisioner.domain import Offering

# Tag/label keys written on every resource. GCE labels allow only [a-z0-9_-], so keep them plain.
TAG_BROKER = "provisioner-broker"
TAG_RESOURCE = "provisioner-resource"
TAG_OFFERING = "provisioner-offering"
TAG_GROUP = "provisioner-group"
TAG_EXPERIMENT = "provisioner-experiment"


class ProviderState(enum.StrEnum):
    """A backend's own view of one resource, mapped to a small common set."""

    PENDING = "pending"  # accepted, booting, queued in Slurm
    RUNNING = "running"
    STOPPING = "stopping"  # terminating, completing, draining
    TERMINATED = "terminated"  # gone, or finished
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    resource_id: str  # the broker's id, written into the tags
    offering: Offering
    idempotency_token: str  # same token on every retry of the same intent
    broker_id: str
    group_id: str | None = None
    experiment: str | None = None
    walltime_hours: float | None = None  # pilots: requested time limit
    tags: Mapping[str, str] = field(default_factory=dict)

    def all_tags(self) -> dict[str, str]:
        tags = {
            TAG_BROKER: self.broker_id,
            TAG_RESOURCE: self.resource_id,
            TAG_OFFERING: self.offering.id,
        }
        if self.group_id:
            tags[TAG_GROUP] = self.group_id
        if self.experiment:
            tags[TAG_EXPERIMENT] = self.experiment
        tags.update(self.tags)
        return tags


@dataclass(frozen=True, slots=True)
class BackendResource:
    """One resource as the backend lists it."""

    provider_id: str  # instance id, GCE instance name, Slurm job id...
    state: ProviderState
    resource_id: str | None  # from our tag; None if untagged by us
    offering_id: str | None = None
    launched_at: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    busy: bool | None = None  # running work, where the backend can tell
    interruption_notice: bool = False  # spot: the provider will take it back soon
    detail: str = ""  # e.g. Slurm pending reason
    zone: str | None = None  # availability zone it runs in, where the provider says (spot prices are zonal)
    stopped_at: datetime | None = None  # terminated: when the provider stopped charging, where it says
    egress_bytes: int | None = None  # bytes the unit has sent out so far (a counter), where the provider tells
    # gone because its own work ended it (a pilot whose payload finished or ran out of work exits 0):
    # a normal end, not a unit the provider took away
    ended_by_itself: bool = False


@dataclass(frozen=True, slots=True)
class SpotPrice:
    """The spot price of one instance type in one zone from `at` on (a point of the price history)."""

    instance_type: str
    zone: str
    at: datetime
    price_per_hour: Decimal


class BackendError(Exception):
    """Base of all backend failures. Messages never contain credentials."""

    retryable: bool = False

    def __init__(self, backend: str, message: str, *, offering_id: str | None = None) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.offering_id = offering_id


class Throttled(BackendError):
    retryable = True


class BackendTimeout(BackendError):
    retryable = True


class CapacityUnavailable(BackendError):
    """The provider has no capacity for this offering now: try another offering."""


class QuotaExceeded(BackendError):
    """An account quota stops this create: try another offering or family.

    `scope` says what else the quota covers (region, market, family...), where the backend can tell.
    """

    def __init__(
        self,
        backend: str,
        message: str,
        *,
        offering_id: str | None = None,
        scope: QuotaScope | None = None,
    ) -> None:
        super().__init__(backend, message, offering_id=offering_id)
        self.scope = scope


class AuthFailed(BackendError):
    """Credentials rejected: stop using this backend until an operator fixes it."""


class InvalidRequest(BackendError):
    """The backend refused the request as malformed (unknown instance type, image...)."""


class MalformedAnswer(BackendError):
    """The provider answered something the backend cannot read (a truncated or changed reply).

    A create answered this way may or may not have made the unit: the intent is kept and retried
    with the same token (the look-up by token finds the unit if it exists), with back-off, and failed
    for good after a bounded number of calls.
    """


@runtime_checkable
class Backend(Protocol):
    """A resource kind: a cloud account, an HPC allocation, a backfill pool, a simulation."""

    name: str

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        """Create one unit for the request; calling again with the same token returns the same unit."""
        ...

    async def list_resources(self) -> list[BackendResource]:
        """Every unit carrying this broker's tag, in any state the backend still reports."""
        ...

    async def release(self, provider_id: str) -> None:
        """Terminate/cancel one unit; releasing an already gone unit is not an error."""
        ...

    async def offerings(self) -> list[Offering]:
        """Offerings this backend can serve now, with live prices/quota where the provider has them."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class OwnerReclaim(Protocol):
    """A backend lending someone else's capacity (backfill): it gives it back when the owner wants it."""

    async def evacuate_for_owners(self) -> list[str]:
        """Release this broker's units that owner work is waiting for; their provider ids.

        Their next listing shows them with `interruption_notice` (owner reclaim)."""
        ...

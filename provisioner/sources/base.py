"""The interface every workload source implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from provisioner.domain import PendingJob


@runtime_checkable
class WorkloadSource(Protocol):
    """Something that knows which jobs are waiting right now."""

    name: str

    async def pending(self) -> list[PendingJob]:
        """Jobs waiting for capacity now. Grouping into DemandGroups is done by the engine."""
        ...

"""Heartbeats from the work on a unit (pilot or worker): the one message, and recording it.

A worker on a VM or pilot says every minute or so whether it runs work, naming its unit by our
resource id (tag `provisioner-resource`) or by the provider's instance id (from instance metadata).
It arrives on the bus (topic `heartbeat`, i.e. `provisioner/<broker id>/heartbeat` on MQTT) or on the
API (`POST /v1/heartbeats`); both end in `record`. The reconciler and the planner read the result
through `provisioner.fleet.busy_signal`: a unit reported idle for the idle-drain time is drained, a
unit with no fresh heartbeat (and no busy view from its backend) is never drained as idle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from provisioner.model import ResourceRow
from provisioner.store import Store

log = structlog.get_logger(__name__)

HEARTBEAT_TOPIC = "heartbeat"


class Heartbeat(BaseModel):
    """What a worker sends; exactly one of `resource_id` and `instance_id` names the unit."""

    model_config = ConfigDict(extra="forbid")

    resource_id: str | None = Field(default=None, min_length=1, max_length=100)
    instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    busy: bool = Field(description="true while at least one job or payload runs on the unit")
    running_jobs: int | None = Field(default=None, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _one_name(self) -> Heartbeat:
        if (self.resource_id is None) == (self.instance_id is None):
            raise ValueError("name the unit by exactly one of resource_id and instance_id")
        return self


class UnknownUnit(LookupError):
    """No live unit has this id."""


def record(store: Store, beat: Heartbeat) -> ResourceRow:
    """Store one heartbeat; UnknownUnit when no unit that can still work has this id."""
    row = store.find_unit(resource_id=beat.resource_id, instance_id=beat.instance_id)
    if row is None:
        raise UnknownUnit(beat.resource_id or beat.instance_id or "")
    updated = store.heartbeat(row.id, busy=beat.busy, running_jobs=beat.running_jobs)
    if updated is None:
        raise UnknownUnit(row.id)
    return updated


def record_message(store: Store, payload: Mapping[str, Any]) -> ResourceRow | None:
    """A heartbeat from the bus: bad or unknown ones are logged and dropped (a worker cannot be told)."""
    try:
        return record(store, Heartbeat.model_validate(dict(payload)))
    except ValidationError as exc:
        log.warning("heartbeat.invalid", errors=exc.error_count())
    except UnknownUnit as exc:
        log.info("heartbeat.unknown_unit", unit=str(exc)[:200])
    return None

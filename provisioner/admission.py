"""Admitting a burst request against a running broker: the policies, the live fleet and the planner's estimate.

The CLI's `request create` and the API's `POST /v1/requests` both come here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from provisioner.broker import Broker
from provisioner.domain import LIVE_STATES
from provisioner.fleet import unit_of
from provisioner.model import BurstRequestRow
from provisioner.requests import (
    Admission,
    BurstRequestSpec,
    admit,
    new_request_id,
    record_admission,
)


@dataclass(frozen=True, slots=True)
class Admitted:
    row: BurstRequestRow
    admission: Admission

    @property
    def offerings(self) -> list[str]:
        plan = self.admission.plan
        if plan is None:
            return []
        return sorted({i.offering_id for i in plan.items if i.group_id == self.admission.group.id})


def admit_spec(broker: Broker, spec: BurstRequestSpec) -> Admitted:
    """Decide on `spec` and store the request (and its demand group when admitted); returns both."""
    now = broker.clock.now()
    offerings = list(broker.offerings.values())
    # The stored live resources, not the engine's in-memory fleet: this process may not run the engine.
    live = broker.store.resources(states=LIVE_STATES)
    price = broker.store.prices_in_force(live, now)
    fleet = [unit_of(r, now, price_micro_per_hour=price[r.id]) for r in live]
    base = broker.constraints([], offerings, fleet, now)
    # As the engine plans: offerings behind an open circuit breaker are not offered.
    constraints = dataclasses.replace(
        base,
        unavailable_offerings=base.unavailable_offerings
        | broker.engine.circuit.unavailable_offerings(offerings),
    )
    request_id = new_request_id(broker.store.ids)
    admission = admit(
        request_id,
        spec,
        constraints=constraints,
        offerings=offerings,
        fleet=fleet,
        plan_fn=broker.engine.planner,
        now=now,
    )
    row = record_admission(broker.db, request_id, spec, admission, now=now)
    return Admitted(row, admission)

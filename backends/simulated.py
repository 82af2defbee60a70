"""Simulated backends (cloud, HPC allocation, backfill) that behave like the real ones, on any clock.

Each implements the `Backend` protocol: create is idempotent on the request token, units carry
the broker's tags, accepted creates go pending → running after a boot (or queue) delay, release
terminates, and terminated units stay listed for a while. Spot interruptions and owner reclaims
follow a seeded random process drawn once per unit from the seed and the unit's place in this
provider's own sequence, so the same seed and the same calls give the same run. Faults (throttling, timeouts, capacity, quota, auth) can be injected, and the whole
state can live in a JSON file so it survives a killed broker process (crash tests, demos).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from backends.base import (
    TAG_BROKER,
    TAG_OFFERING,
    TAG_RESOURCE,
    AuthFailed,
    BackendResource,
    BackendTimeout,
    CapacityUnavailable,
    InvalidRequest,
    ProviderState,
    ProvisionRequest,
    QuotaExceeded,
    Throttled,
)
from provisioner.clock import Clock
from provisioner.domain import Market, Offering

NOTICE_SECONDS = 120  # EC2 gives two minutes' notice before a spot interruption


@dataclass
class Faults:
    """Injected failures. Counters count down per provision call; sets name offering ids."""

    throttle_next: int = 0  # the next N provision calls raise Throttled (nothing created)
    timeout_next: int = 0  # the next N provision calls create the unit, then raise BackendTimeout
    capacity: set[str] = field(default_factory=set)  # CapacityUnavailable for these offerings
    quota: set[str] = field(default_factory=set)  # QuotaExceeded for these offerings
    auth: bool = False  # every call raises AuthFailed
    list_timeout: bool = False  # list_resources raises BackendTimeout
    never_boot: set[str] = field(default_factory=set)  # units of these offerings stay pending


@dataclass
class SimUnit:
    provider_id: str
    token: str
    offering_id: str
    tags: dict[str, str]
    created_at: datetime
    boot_at: datetime
    state: ProviderState = ProviderState.PENDING
    busy: bool = False
    started_at: datetime | None = None
    notice_at: datetime | None = None
    interrupt_at: datetime | None = None  # provider takes it back (spot) / owner reclaims (backfill)
    end_at: datetime | None = None  # pilot walltime runs out
    terminated_at: datetime | None = None
    terminated_by: str | None = None  # "broker" | "provider" | "walltime"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.isoformat() if isinstance(v, datetime) else str(v) if f.name == "state" else v
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SimUnit:
        kwargs: dict[str, Any] = dict(data)
        for name in (
            "created_at",
            "boot_at",
            "started_at",
            "notice_at",
            "interrupt_at",
            "end_at",
            "terminated_at",
        ):
            if kwargs.get(name) is not None:
                kwargs[name] = datetime.fromisoformat(kwargs[name])
        kwargs["state"] = ProviderState(kwargs["state"])
        return cls(**kwargs)


class SimulatedBackend:
    """Common machinery; `SimulatedCloud`, `SimulatedHPC` and `SimulatedBackfill` set the behaviour."""

    provider = "simulated"

    def __init__(
        self,
        name: str,
        offerings: Iterable[Offering],
        clock: Clock,
        *,
        broker_id: str | None = None,
        seed: int = 0,
        boot_seconds: float | None = None,
        listing_delay_seconds: float = 0.0,
        retention_seconds: float = 3600.0,
        capacity: Mapping[str, int] | None = None,
        faults: Faults | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.name = name
        self._offerings = {o.id: o for o in offerings}
        self.clock = clock
        self.broker_id = broker_id
        self.seed = seed
        self.boot_seconds = boot_seconds
        self.listing_delay = timedelta(seconds=listing_delay_seconds)
        self.retention = timedelta(seconds=retention_seconds)
        self.capacity = dict(capacity or {})
        self.faults = faults or Faults()
        self.state_file = state_file
        self.egress_gb_per_hour = 0.0  # data each running unit sends out of the provider, per hour
        self.units: dict[str, SimUnit] = {}
        self.forgotten: dict[str, SimUnit] = {}  # terminated units no longer listed, kept for the invoice
        self.calls: dict[str, int] = {"provision": 0, "list": 0, "release": 0}
        self._next_id = 1
        self._lock: IO[str] | None = None
        self._load()
        self._unlock()

    # --- persistence ---------------------------------------------------------------------------
    # With a state file, several processes (the engine, Slurm's resume program, a crash test's
    # restarted broker) share one simulated provider: `_load` takes an exclusive file lock that
    # `_save` (or `_unlock`) gives back, so no process writes over another's units.

    def _unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _load(self) -> None:
        if self.state_file is None:
            return
        if self._lock is None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self._lock = self.state_file.with_suffix(".lock").open("a")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        if not self.state_file.exists():
            return
        data = json.loads(self.state_file.read_text())
        self.units = {u["provider_id"]: SimUnit.from_json(u) for u in data["units"]}
        self.forgotten = {u["provider_id"]: SimUnit.from_json(u) for u in data.get("forgotten", [])}
        self.calls = {k: int(v) for k, v in data["calls"].items()}
        self._next_id = int(data["next_id"])

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "units": [u.to_json() for u in self.units.values()],
            "forgotten": [u.to_json() for u in self.forgotten.values()],
            "calls": self.calls,
            "next_id": self._next_id,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.state_file)  # atomic: a killed process leaves the old or the new state
        self._unlock()

    # --- behaviour hooks -----------------------------------------------------------------------

    def _boot_delay(self, offering: Offering) -> timedelta:
        seconds = self.boot_seconds if self.boot_seconds is not None else offering.startup_seconds
        return timedelta(seconds=seconds)

    def _takeback_rate(self, offering: Offering) -> float:
        """Per-hour rate at which a running unit is taken back (0: never)."""
        return 0.0

    def _walltime(self, offering: Offering, request: ProvisionRequest) -> float | None:
        return None

    # --- helpers -------------------------------------------------------------------------------

    def _rng(self, token: str) -> random.Random:
        return random.Random(f"{self.seed}:{self.name}:{token}")

    def _advance(self) -> None:
        now = self.clock.now()
        for u in self.units.values():
            if u.state == ProviderState.TERMINATED:
                continue
            if u.state == ProviderState.STOPPING:
                u.state, u.terminated_at = ProviderState.TERMINATED, u.terminated_at or now
                continue
            if (
                u.state == ProviderState.PENDING
                and now >= u.boot_at
                and u.offering_id not in self.faults.never_boot
            ):
                u.state, u.started_at = ProviderState.RUNNING, u.boot_at
            if u.interrupt_at is not None and now >= u.interrupt_at:
                u.state, u.terminated_at, u.terminated_by = (
                    ProviderState.TERMINATED,
                    u.interrupt_at,
                    "provider",
                )
                u.busy = False
            elif u.end_at is not None and u.state == ProviderState.RUNNING and now >= u.end_at:
                u.state, u.terminated_at, u.terminated_by = ProviderState.TERMINATED, u.end_at, "walltime"
                u.busy = False

    def _live(self, offering_id: str) -> int:
        return sum(
            1
            for u in self.units.values()
            if u.offering_id == offering_id and u.state != ProviderState.TERMINATED
        )

    def _view(self, u: SimUnit) -> BackendResource:
        now = self.clock.now()
        return BackendResource(
            provider_id=u.provider_id,
            state=u.state,
            resource_id=u.tags.get(TAG_RESOURCE),
            offering_id=u.tags.get(TAG_OFFERING, u.offering_id),
            launched_at=u.started_at,
            tags=dict(u.tags),
            busy=u.busy if u.state == ProviderState.RUNNING else None,
            interruption_notice=(
                u.notice_at is not None and now >= u.notice_at and u.state != ProviderState.TERMINATED
            ),
            detail=u.terminated_by or "",
            zone=self._offerings[u.offering_id].zone if u.offering_id in self._offerings else None,
            stopped_at=u.terminated_at,
            egress_bytes=self.egress_bytes(u, now),
        )

    def egress_bytes(self, u: SimUnit, until: datetime) -> int | None:
        """Bytes a unit sent out up to `until`: `egress_gb_per_hour` over its running time (None: not modelled)."""
        if not self.egress_gb_per_hour:
            return None
        if u.started_at is None:
            return 0
        end = min(until, u.terminated_at) if u.terminated_at is not None else until
        seconds = max(0.0, (end - u.started_at).total_seconds())
        return int(self.egress_gb_per_hour * 1e9 * seconds / 3600)

    def _find(self, key: str) -> SimUnit:
        if key in self.units:
            return self.units[key]
        for u in self.units.values():
            if u.tags.get(TAG_RESOURCE) == key:
                return u
        raise KeyError(f"{self.name}: no unit {key}")

    # --- the Backend protocol ------------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        self._load()
        self.calls["provision"] += 1
        try:
            return self._provision(request)
        finally:
            self._save()

    def _provision(self, request: ProvisionRequest) -> BackendResource:
        f = self.faults
        if f.auth:
            raise AuthFailed(self.name, "credentials rejected (simulated)")
        if f.throttle_next > 0:
            f.throttle_next -= 1
            raise Throttled(self.name, "request rate exceeded (simulated)", offering_id=request.offering.id)
        self._advance()
        for u in self.units.values():
            if u.token == request.idempotency_token:
                return self._view(u)  # same token: same unit, as EC2 ClientToken does
        offering = self._offerings.get(request.offering.id)
        if offering is None:
            raise InvalidRequest(self.name, f"unknown offering {request.offering.id}")
        if offering.id in f.quota:
            raise QuotaExceeded(self.name, f"quota exhausted for {offering.family}", offering_id=offering.id)
        limit = self.capacity.get(offering.id, offering.capacity_units)
        if offering.id in f.capacity or (limit is not None and self._live(offering.id) >= limit):
            raise CapacityUnavailable(self.name, f"no capacity for {offering.id}", offering_id=offering.id)
        now = self.clock.now()
        boot_at = now + self._boot_delay(offering)
        unit = SimUnit(
            provider_id=f"sim-{self.name}-{self._next_id:06d}",
            token=request.idempotency_token,
            offering_id=offering.id,
            tags=request.all_tags(),
            created_at=now,
            boot_at=boot_at,
        )
        self._next_id += 1
        rng = self._rng(unit.provider_id)  # this provider's own sequence, not the caller's random ids
        rate = self._takeback_rate(offering)
        if rate > 0:
            unit.interrupt_at = boot_at + timedelta(hours=rng.expovariate(rate))
            unit.notice_at = max(boot_at, unit.interrupt_at - timedelta(seconds=NOTICE_SECONDS))
        walltime = self._walltime(offering, request)
        if walltime is not None:
            unit.end_at = boot_at + timedelta(hours=walltime)
        self.units[unit.provider_id] = unit
        if f.timeout_next > 0:
            f.timeout_next -= 1  # the create happened, but the answer never came back
            raise BackendTimeout(self.name, "no answer in time (simulated)", offering_id=offering.id)
        return self._view(unit)

    async def list_resources(self) -> list[BackendResource]:
        self._load()
        self.calls["list"] += 1
        try:
            if self.faults.auth:
                raise AuthFailed(self.name, "credentials rejected (simulated)")
            if self.faults.list_timeout:
                raise BackendTimeout(self.name, "listing timed out (simulated)")
            self._advance()
            now = self.clock.now()
            out = []
            for u in list(self.units.values()):
                if u.terminated_at is not None and now - u.terminated_at > self.retention:
                    # providers forget terminated units after a while (their bill remembers them)
                    self.forgotten[u.provider_id] = self.units.pop(u.provider_id)
                    continue
                if now - u.created_at < self.listing_delay:
                    continue  # eventual consistency: a fresh create is not listed yet
                if self.broker_id is not None and u.tags.get(TAG_BROKER) != self.broker_id:
                    continue
                if TAG_BROKER not in u.tags:
                    continue
                out.append(self._view(u))
            return out
        finally:
            self._save()

    async def release(self, provider_id: str) -> None:
        self._load()
        self.calls["release"] += 1
        try:
            if self.faults.auth:
                raise AuthFailed(self.name, "credentials rejected (simulated)")
            self._advance()
            u = self.units.get(provider_id)
            if u is None or u.state == ProviderState.TERMINATED:
                return  # releasing twice is not an error
            u.state, u.terminated_at, u.terminated_by = ProviderState.TERMINATED, self.clock.now(), "broker"
            u.busy = False
        finally:
            self._save()

    async def offerings(self) -> list[Offering]:
        if self.faults.auth:
            raise AuthFailed(self.name, "credentials rejected (simulated)")
        return list(self._offerings.values())

    async def close(self) -> None:
        """Nothing to flush: every call saved its change (saving here would overwrite other processes')."""

    # --- for tests, demos and the simulator ----------------------------------------------------

    def set_busy(self, key: str, busy: bool) -> None:
        """Mark a unit (provider id or our resource id) as running work or idle."""
        self._load()
        try:
            u = self._find(key)
            if u.state == ProviderState.TERMINATED:
                raise ValueError(f"{self.name}: unit {key} is terminated, cannot set busy")
            u.busy = busy
        finally:
            self._save()

    def interrupt(self, key: str, *, in_seconds: float = NOTICE_SECONDS) -> None:
        """Give a unit an interruption notice now; it is taken back `in_seconds` later."""
        self._load()
        try:
            u = self._find(key)
            now = self.clock.now()
            u.notice_at = now
            u.interrupt_at = now + timedelta(seconds=in_seconds)
        finally:
            self._save()

    def inject_unit(self, offering_id: str, tags: Mapping[str, str], *, running: bool = True) -> str:
        """A unit created outside this process (an orphan from a crashed or older broker)."""
        self._load()
        now = self.clock.now()
        pid = f"sim-{self.name}-{self._next_id:06d}"
        self._next_id += 1
        self.units[pid] = SimUnit(
            provider_id=pid,
            token=f"injected-{pid}",
            offering_id=offering_id,
            tags=dict(tags),
            created_at=now,
            boot_at=now,
            state=ProviderState.RUNNING if running else ProviderState.PENDING,
            started_at=now if running else None,
        )
        self._save()
        return pid

    def billable_units(self) -> list[SimUnit]:
        """Every unit this provider ever created, listed or forgotten, in creation order (for its invoice)."""
        self._load()
        try:
            self._advance()
            return sorted([*self.forgotten.values(), *self.units.values()], key=lambda u: u.provider_id)
        finally:
            self._save()

    def offering(self, offering_id: str) -> Offering | None:
        return self._offerings.get(offering_id)

    def live_units(self) -> list[SimUnit]:
        self._load()
        try:
            self._advance()
            return [u for u in self.units.values() if u.state != ProviderState.TERMINATED]
        finally:
            self._save()


class SimulatedCloud(SimulatedBackend):
    """A cloud account: on-demand units run until released, spot ones may be interrupted."""

    def __init__(self, *args: Any, spot_interruption_rate: float | None = None, **kwargs: Any) -> None:
        self.spot_interruption_rate = spot_interruption_rate
        super().__init__(*args, **kwargs)

    def _takeback_rate(self, offering: Offering) -> float:
        if offering.market != Market.SPOT:
            return 0.0
        if self.spot_interruption_rate is not None:
            return self.spot_interruption_rate
        return offering.interruption_rate_per_hour


class SimulatedHPC(SimulatedBackend):
    """An HPC allocation: each unit is a pilot job that waits in the queue, then runs to its walltime."""

    def __init__(
        self,
        *args: Any,
        queue_wait_seconds: float = 600.0,
        default_walltime_hours: float = 24.0,
        **kwargs: Any,
    ) -> None:
        self.queue_wait_seconds = queue_wait_seconds
        self.default_walltime_hours = default_walltime_hours
        super().__init__(*args, **kwargs)

    def _boot_delay(self, offering: Offering) -> timedelta:
        return timedelta(seconds=self.queue_wait_seconds)

    def _walltime(self, offering: Offering, request: ProvisionRequest) -> float | None:
        wanted = request.walltime_hours or offering.max_walltime_hours or self.default_walltime_hours
        if offering.max_walltime_hours is not None:
            wanted = min(wanted, offering.max_walltime_hours)
        return wanted

    def node_hours_used(self) -> float:
        """Node-hours consumed by pilots so far (running time of every unit that started)."""
        self._advance()
        now = self.clock.now()
        total = 0.0
        for u in self.units.values():
            if u.started_at is None or u.started_at > now:
                continue
            end = u.terminated_at or now
            total += max(0.0, (end - u.started_at).total_seconds()) / 3600.0
        return total

    def node_hours_booked(self, offering_id: str, ends: datetime) -> tuple[float, float]:
        """(in flight, committed) of one allocation offering: running pilots' remaining walltime,
        queued pilots' whole walltime, never past `ends` (the allocation's end date)."""
        now = self.clock.now()
        in_flight = committed = 0.0
        for u in self.units.values():
            if (
                u.offering_id != offering_id
                or u.end_at is None
                or (u.terminated_at is not None and u.terminated_at <= now)
            ):
                continue
            end = min(u.end_at, ends)
            if u.started_at is not None and u.started_at <= now:
                in_flight += max(0.0, (end - now).total_seconds()) / 3600.0
            else:
                committed += max(0.0, (end - max(u.boot_at, now)).total_seconds()) / 3600.0
        return in_flight, committed

    async def offerings(self) -> list[Offering]:
        base = await super().offerings()
        used = self.node_hours_used()
        out = []
        for o in base:
            if o.allocation is not None:
                in_flight, committed = self.node_hours_booked(o.id, o.allocation.ends)
                alloc = dataclasses.replace(
                    o.allocation,
                    node_hours_used=o.allocation.node_hours_used + used,
                    node_hours_in_flight=in_flight,
                    node_hours_committed=committed,
                )
                o = dataclasses.replace(o, allocation=alloc)
            out.append(o)
        return out


class SimulatedBackfill(SimulatedBackend):
    """Idle nodes lent out until their owner wants them back (a seeded reclaim process, or `reclaim`)."""

    def __init__(self, *args: Any, reclaim_rate_per_hour: float | None = None, **kwargs: Any) -> None:
        self.reclaim_rate_per_hour = reclaim_rate_per_hour
        super().__init__(*args, **kwargs)

    def _takeback_rate(self, offering: Offering) -> float:
        if self.reclaim_rate_per_hour is not None:
            return self.reclaim_rate_per_hour
        return offering.interruption_rate_per_hour

    def reclaim(self, key: str, *, grace_seconds: float = 60.0) -> None:
        """The owner needs the node: notice now, gone after the grace period."""
        self.interrupt(key, in_seconds=grace_seconds)

"""The crash-safe actuator: turns plan items into resources, one committed intent before each call.

For every unit: write the `requested` row with a deterministic idempotency token and COMMIT, then
call `backend.provision` carrying that token, then record the provider id (`provisioning`). A
process killed anywhere in between leaves a `requested` row that the next run retries with the
SAME token (the provider returns the unit it already made) or that the reconciler resolves by
finding the tagged unit — never a leaked or doubled unit. Set `PROVISIONER_CRASH_AT` to
`after_intent`, `after_call` or `after_record` to kill the process at that point (tests).
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from backends.base import (
    AuthFailed,
    Backend,
    BackendError,
    BackendResource,
    CapacityUnavailable,
    MalformedAnswer,
    ProviderState,
    ProvisionRequest,
    QuotaExceeded,
)
from backends.quota import QuotaScope, offering_scope
from provisioner.circuit import CircuitBreaker, backend_key, offering_key
from provisioner.clock import Clock
from provisioner.domain import DrainOrder, Market, Offering, PlanItem, ResourceState
from provisioner.leader import LeadershipLost
from provisioner.model import ResourceRow, row_time
from provisioner.store import Store

log = structlog.get_logger(__name__)

CRASH_ENV = "PROVISIONER_CRASH_AT"
CRASH_POINTS = frozenset({"after_intent", "after_call", "after_record"})


def crash_point(name: str) -> None:
    """Die like `kill -9` here if the environment asks for it (crash-safety tests only)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class ActuatorSettings:
    call_attempts: int = 4  # tries per backend call for Throttled / BackendTimeout
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 30.0
    max_intent_attempts: int = 12  # calls per intent over all cycles and restarts before giving up
    # An intent whose last call failed waits this long (doubling per call made, capped) before the
    # next try, so one poison intent cannot eat every cycle's time or hammer the provider.
    intent_backoff_initial_seconds: float = 5.0
    intent_backoff_max_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class Unplaced:
    """Demand the actuator could not place on the planned offering; the engine replans it."""

    group_id: str
    offering_id: str
    units: int
    jobs: int
    reason: str


@dataclass
class ActOutcome:
    created: list[str] = field(default_factory=list)  # resource ids the backends accepted
    resumed: list[str] = field(default_factory=list)  # `requested` rows from before, now accepted
    pending: list[str] = field(default_factory=list)  # still `requested` after retryable failures
    failed: list[str] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    disabled_backends: set[str] = field(default_factory=set)
    backing_off: list[str] = field(default_factory=list)  # `requested` rows waiting out their back-off
    errors: dict[str, str] = field(default_factory=dict)  # resource id -> what went wrong with it


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


PILOT_SLACK = 0.1  # share of the planned run added to a pilot's time limit, in whole minutes


def pilot_walltime(planned_hours: float, offering: Offering, now: datetime | None = None) -> float | None:
    """Time limit for an HPC pilot: the planned run plus a tenth, in whole minutes (Slurm's unit), within
    the offering's maximum and never past its allocation's end date.

    The payload starts only after the pilot does and jobs rarely end on the planned minute; Slurm
    kills a pilot at its limit and the work on it is lost, so a limit cut to the plan wastes hours —
    but every minute of slack is booked against the allocation, so the slack is what is needed, not a
    fixed half hour. Cloud VMs have no limit (None): the broker releases them.
    """
    if offering.market not in (Market.ALLOCATION, Market.BACKFILL):
        return None
    planned_minutes = planned_hours * 60
    minutes = max(math.ceil(planned_minutes - 1e-9), math.floor(planned_minutes * (1 + PILOT_SLACK) + 1e-9))
    wanted = max(1, minutes) / 60
    if offering.max_walltime_hours is not None:
        wanted = min(wanted, offering.max_walltime_hours)
    if now is not None and offering.allocation is not None:
        wanted = min(wanted, max(0.0, (offering.allocation.ends - now).total_seconds() / 3600))
    return wanted


def _always_leading() -> None:
    """The guard of a broker with no replicas: it always leads."""


class Actuator:
    def __init__(
        self,
        store: Store,
        circuit: CircuitBreaker,
        backends: Mapping[str, Backend],
        clock: Clock,
        settings: ActuatorSettings | None = None,
    ) -> None:
        self.store = store
        self.circuit = circuit
        self.backends = backends
        self.clock = clock
        self.settings = settings or ActuatorSettings()
        self.known_offerings: Mapping[str, Offering] = {}  # this cycle's offerings, by id (quota scopes)
        # quota scopes that refused a unit since they last had room (a success under one resets it)
        self.quota_scopes: dict[str, QuotaScope] = {}
        # Called before every provider call: raises LeadershipLost once this replica no longer leads.
        self.guard: Callable[[], None] = _always_leading

    # --- provisioning --------------------------------------------------------------------------

    def _request(self, row: ResourceRow, offering: Offering) -> ProvisionRequest:
        return ProvisionRequest(
            resource_id=row.id,
            offering=offering,
            idempotency_token=row.idempotency_token,
            broker_id=self.store.broker_id,
            group_id=row.group_id,
            experiment=row.experiment,
            walltime_hours=row.walltime_hours,
        )

    async def _call(
        self, backend: Backend, row: ResourceRow, offering: Offering, calls: list[int]
    ) -> BackendResource:
        """Provision with bounded backoff on retryable errors; `calls[0]` counts the calls made."""
        st = self.settings
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, BackendError) and e.retryable),
            stop=stop_after_attempt(st.call_attempts),
            wait=wait_exponential(multiplier=st.backoff_initial_seconds, max=st.backoff_max_seconds),
            sleep=self.clock.sleep,
            reraise=True,
        )
        request = self._request(row, offering)
        async for attempt in retrying:
            with attempt:
                self.guard()
                calls[0] += 1
                return await backend.provision(request)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _record(self, row: ResourceRow, result: BackendResource, calls: int) -> None:
        await self.store.transition(
            row.id, ResourceState.PROVISIONING, provider_id=result.provider_id, calls=calls
        )
        if result.state == ProviderState.RUNNING:
            await self.store.transition(row.id, ResourceState.RUNNING, launched_at=result.launched_at)

    async def disable_backend(self, backend: str, exc: BackendError) -> None:
        trip = self.circuit.record_failure(
            backend_key(backend), str(exc), cooloff=self.circuit.settings.auth_cooloff
        )
        log.error("backend.disabled", backend=backend, error=str(exc), until=trip.open_until)
        await self.store.event(
            "backend.disabled",
            backend,
            {"error": str(exc), "until": trip.open_until, "level": "error"},
        )

    async def _error_event(self, offering: Offering, row: ResourceRow, exc: BackendError) -> None:
        """Every backend failure is an event (metrics count them by type); the message is credential-free."""
        await self.store.event(
            "backend.error",
            row.id,
            {
                "backend": offering.backend,
                "offering_id": offering.id,
                "error_type": type(exc).__name__,
                "error": str(exc),
            },
        )

    async def _provision_one(self, backend: Backend, row: ResourceRow, offering: Offering) -> str | None:
        """Call and record; returns None on success, else why the unit could not be placed here.

        Raises nothing for backend errors: each is turned into a state change and a circuit entry.
        """
        calls = [0]
        try:
            result = await self._call(backend, row, offering, calls)
        except QuotaExceeded as exc:
            await self._error_event(offering, row, exc)
            await self.store.transition(row.id, ResourceState.FAILED, failure_reason=str(exc), calls=calls[0])
            await self._block_quota(offering, exc)
            return type(exc).__name__
        except CapacityUnavailable as exc:
            await self._error_event(offering, row, exc)
            await self.store.transition(row.id, ResourceState.FAILED, failure_reason=str(exc), calls=calls[0])
            trip = self.circuit.record_failure(
                offering_key(offering.id), str(exc), cooloff=self.circuit.settings.unavailable_cooloff
            )
            if trip.opened:
                await self.store.event(
                    "circuit.opened", trip.key, {"until": trip.open_until, "error": str(exc)}
                )
            return type(exc).__name__
        except AuthFailed as exc:
            await self._error_event(offering, row, exc)
            await self.store.transition(row.id, ResourceState.FAILED, failure_reason=str(exc), calls=calls[0])
            await self.disable_backend(offering.backend, exc)
            return type(exc).__name__
        except BackendError as exc:
            await self._error_event(offering, row, exc)
            if isinstance(exc, MalformedAnswer):
                return await self._poisoned(row, offering, exc, calls[0])
            if exc.retryable:
                # The call may or may not have happened: keep the intent, retry it with the same token.
                self.store.note_attempts(row.id, calls[0], str(exc))
                trip = self.circuit.record_failure(backend_key(offering.backend), str(exc))
                if trip.opened:
                    await self.store.event("circuit.opened", trip.key, {"until": trip.open_until})
                return "retry"
            await self.store.transition(row.id, ResourceState.FAILED, failure_reason=str(exc), calls=calls[0])
            trip = self.circuit.record_failure(offering_key(offering.id), str(exc))
            if trip.opened:
                await self.store.event("circuit.opened", trip.key, {"until": trip.open_until})
            return type(exc).__name__
        except LeadershipLost:
            raise
        except Exception as exc:  # an answer nobody expected: this intent only, never the whole cycle
            log.error(
                "resource.provision_unexpected",
                resource=row.id,
                offering=offering.id,
                error_type=type(exc).__name__,
                error=str(exc)[:300],
            )
            await self.store.event(
                "backend.error",
                row.id,
                {
                    "backend": offering.backend,
                    "offering_id": offering.id,
                    "error_type": type(exc).__name__,
                    "error": str(exc)[:300],
                },
            )
            return await self._poisoned(row, offering, exc, calls[0])
        crash_point("after_call")
        await self._record(row, result, calls[0])
        self.circuit.record_success(backend_key(offering.backend))
        self._quota_served(offering)
        crash_point("after_record")
        return None

    def _quota_served(self, offering: Offering) -> None:
        """A unit created under a quota that refused before: the quota has room again, so its next
        refusal starts a new cool-off instead of doubling the last one."""
        for key, scope in list(self.quota_scopes.items()):
            if scope.covers(offering):
                self.circuit.record_success(key)
                del self.quota_scopes[key]

    async def _block_quota(self, offering: Offering, exc: QuotaExceeded) -> None:
        """Block every offering the quota covers (not just this one), with a doubling cool-off, so the
        replan of this very cycle picks an offering outside the quota."""
        scope = exc.scope or offering_scope(offering.backend, offering)
        self.quota_scopes[scope.key] = scope
        covered = {offering.id} | {o.id for o in self.known_offerings.values() if scope.covers(o)}
        trip = self.circuit.block_scope(scope.key, str(exc), [offering_key(oid) for oid in covered])
        log.warning(
            "quota.blocked",
            scope=scope.describe(),
            offerings=len(covered),
            until=trip.open_until,
            failures=trip.failures,
        )
        await self.store.event(
            "quota.blocked",
            scope.key,
            {
                "scope": scope.describe(),
                "offerings": len(covered),
                "until": trip.open_until,
                "repeats": trip.failures,
                "error": str(exc)[:300],
            },
        )

    async def _poisoned(self, row: ResourceRow, offering: Offering, exc: Exception, calls: int) -> str:
        """A call whose outcome is unknown (the unit may exist): keep the intent for a later retry
        with the same token, count the call, and fail it for good after `max_intent_attempts`."""
        reason = f"unexpected answer from {offering.backend}: {type(exc).__name__}: {str(exc)[:300]}"
        attempts = self.store.note_attempts(row.id, max(calls, 1), reason)
        trip = self.circuit.record_failure(offering_key(offering.id), reason)
        if trip.opened:
            await self.store.event("circuit.opened", trip.key, {"until": trip.open_until, "error": reason})
        if attempts >= self.settings.max_intent_attempts:
            # Should the provider have made it after all, the reconciler releases the failed row's unit.
            await self.store.transition(
                row.id, ResourceState.FAILED, failure_reason=f"gave up after {attempts} calls: {reason}"
            )
            return "poison"
        return "retry"

    def backoff_until(self, row: ResourceRow) -> datetime | None:
        """When a `requested` row that failed before may be tried again (None: now)."""
        if row.attempts <= 0:
            return None  # never called (a crash right after the intent): retry at once
        st = self.settings
        delay = min(
            st.intent_backoff_initial_seconds * 2 ** min(row.attempts - 1, 20), st.intent_backoff_max_seconds
        )
        since = row_time(row.updated_at)
        return None if since is None else since + timedelta(seconds=delay)

    def _blocked(self, offering: Offering) -> str | None:
        if offering.backend not in self.backends:
            return f"no backend {offering.backend} configured"
        if self.circuit.is_open(backend_key(offering.backend)):
            return f"backend {offering.backend} circuit open"
        if self.circuit.is_open(offering_key(offering.id)):
            return f"offering {offering.id} circuit open"
        return None

    async def execute(
        self,
        items: Sequence[PlanItem],
        offerings: Mapping[str, Offering],
        experiments: Mapping[str, str],
        outcome: ActOutcome | None = None,
        request_ids: Mapping[str, str] | None = None,
    ) -> ActOutcome:
        """Start the units of each plan item; `experiments` and `request_ids` are keyed by group id."""
        out = outcome or ActOutcome()
        self.known_offerings = offerings
        for item in items:
            offering = offerings.get(item.offering_id)
            if offering is None:
                out.unplaced.append(
                    Unplaced(item.group_id, item.offering_id, item.units, item.jobs, "unknown")
                )
                continue
            blocked = self._blocked(offering)
            if blocked is not None:
                out.unplaced.append(Unplaced(item.group_id, offering.id, item.units, item.jobs, blocked))
                continue
            backend = self.backends[offering.backend]
            walltime = pilot_walltime(item.hours, offering, self.clock.now())
            jobs = _split(item.jobs, item.units) if item.units > 0 else []
            for i in range(item.units):
                row = await self.store.record_intent(
                    offering,
                    group_id=item.group_id,
                    experiment=experiments.get(item.group_id),
                    request_id=(request_ids or {}).get(item.group_id),
                    walltime_hours=walltime,
                )
                crash_point("after_intent")
                why = await self._provision_one(backend, row, offering)
                if why is None:
                    out.created.append(row.id)
                    continue
                if why == "retry":
                    out.pending.append(row.id)
                else:
                    out.failed.append(row.id)
                    if why == "AuthFailed":
                        out.disabled_backends.add(offering.backend)
                    # Capacity, quota, auth, bad request: this offering will not take the rest either.
                    out.unplaced.append(
                        Unplaced(item.group_id, offering.id, item.units - i, sum(jobs[i:]), why)
                    )
                break  # throttled or failed: leave the rest of this item to the next plan
        return out

    async def resume_requested(self, offerings: Mapping[str, Offering], outcome: ActOutcome) -> None:
        """Retry `requested` rows (a crash or a retryable error came between intent and record).

        Each row on its own: whatever one raises is counted against that row, never the others.
        """
        now = self.clock.now()
        self.known_offerings = offerings
        for row in self.store.resources(states=[ResourceState.REQUESTED]):
            try:
                await self._resume_one(row, offerings, outcome, now)
            except LeadershipLost:
                raise
            except Exception as exc:  # a bug or a store hiccup on one row: count it, go on
                log.error("resource.resume_failed", resource=row.id, error_type=type(exc).__name__)
                outcome.errors[row.id] = f"{type(exc).__name__}: {str(exc)[:300]}"

    async def _resume_one(
        self, row: ResourceRow, offerings: Mapping[str, Offering], outcome: ActOutcome, now: datetime
    ) -> None:
        offering = offerings.get(row.offering_id)
        if row.attempts >= self.settings.max_intent_attempts:
            # Should the provider have made it after all, the reconciler releases the failed row's unit.
            last = f": {row.failure_reason}" if row.failure_reason else ""
            await self.store.transition(
                row.id, ResourceState.FAILED, failure_reason=f"gave up after {row.attempts} calls{last}"[:500]
            )
            outcome.failed.append(row.id)
            return
        if (
            offering is not None
            and row.attempts > 0
            and self.circuit.is_open(offering_key(offering.id))
            and not self.circuit.is_open(backend_key(offering.backend))
        ):
            # Its offering is backed off after failures like this one's: let the demand go elsewhere
            # now. Should the provider have made the unit after all, the reconciler releases it.
            last = f": {row.failure_reason}" if row.failure_reason else ""
            await self.store.transition(
                row.id,
                ResourceState.FAILED,
                failure_reason=f"offering backed off after {row.attempts} calls{last}"[:500],
            )
            outcome.failed.append(row.id)
            return
        if offering is None or self._blocked(offering) is not None:
            return  # try again once the offering is known and its backend usable
        until = self.backoff_until(row)
        if until is not None and until > now:
            outcome.backing_off.append(row.id)
            return
        why = await self._provision_one(self.backends[offering.backend], row, offering)
        if why is None:
            outcome.resumed.append(row.id)
        elif why == "retry":
            outcome.pending.append(row.id)
        else:
            outcome.failed.append(row.id)

    # --- draining and releasing ----------------------------------------------------------------

    async def drain(self, orders: Sequence[DrainOrder]) -> list[str]:
        """Stop giving new work to these units; the reconciler releases them once idle.

        Idle is what the work says: a pilot whose payload sends no heartbeat (Slurm's RUNNING says
        nothing about work on it), or a queued one, is released at the next reconcile — cancelled,
        SIGTERM to the payload then SIGKILL after Slurm's KillWait — and its hours stop counting
        against the allocation; one whose payload reports jobs is left to finish them.
        """
        drained = []
        for order in orders:
            row = self.store.get(order.resource_id)
            if row is None:
                continue
            state = ResourceState(row.state)
            if state in (ResourceState.PROVISIONING, ResourceState.RUNNING):
                await self.store.transition(row.id, ResourceState.DRAINING, reason=str(order.reason))
                drained.append(row.id)
        return drained

    async def release(self, row: ResourceRow, reason: str, *, provider_id: str | None = None) -> bool:
        """Terminate one unit: mark it draining (committed) first, call the backend, then `released`.

        `provider_id` names the unit when the row never learnt it (found by its tag in a listing).
        """
        provider_id = provider_id or row.provider_id
        state = ResourceState(row.state)
        if state in (ResourceState.PROVISIONING, ResourceState.RUNNING):
            row = await self.store.transition(row.id, ResourceState.DRAINING, reason=reason)
        backend = self.backends.get(row.backend)
        if provider_id and backend is not None:
            try:
                retrying = AsyncRetrying(
                    retry=retry_if_exception(lambda e: isinstance(e, BackendError) and e.retryable),
                    stop=stop_after_attempt(self.settings.call_attempts),
                    wait=wait_exponential(
                        multiplier=self.settings.backoff_initial_seconds,
                        max=self.settings.backoff_max_seconds,
                    ),
                    sleep=self.clock.sleep,
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        self.guard()
                        await backend.release(provider_id)
            except AuthFailed as exc:
                await self.disable_backend(row.backend, exc)
                return False
            except BackendError as exc:
                log.warning("resource.release_failed", resource=row.id, error=str(exc))
                return False  # still draining: the next cycle tries again
            except LeadershipLost:
                raise
            except Exception as exc:  # an unreadable answer: still draining, the next cycle tries again
                log.error(
                    "resource.release_unexpected",
                    resource=row.id,
                    error_type=type(exc).__name__,
                    error=str(exc)[:300],
                )
                return False
        elif provider_id and backend is None:
            log.warning("resource.release_no_backend", resource=row.id, backend=row.backend)
            return False
        await self.store.transition(row.id, ResourceState.RELEASED, reason=reason)
        return True

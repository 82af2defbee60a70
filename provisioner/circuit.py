"""Circuit breaker per backend and per offering, persisted in `offering_health` so restarts remember it.

N consecutive failures open the circuit for a cool-off that doubles with every further failure
(capped); a success closes it. Capacity and quota errors open an offering at once; a rejected
credential opens the whole backend for a long time. The open set feeds
`PlanningConstraints.unavailable_offerings`, so demand goes elsewhere instead of looping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, select

from provisioner.clock import Clock
from provisioner.db import session as open_session
from provisioner.domain import Offering
from provisioner.model import OfferingHealthRow, row_time

log = structlog.get_logger(__name__)


def backend_key(name: str) -> str:
    return f"backend:{name}"


def offering_key(offering_id: str) -> str:
    return f"offering:{offering_id}"


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    threshold: int = 3  # consecutive failures before opening
    base_cooloff: timedelta = timedelta(minutes=5)
    max_cooloff: timedelta = timedelta(hours=6)
    unavailable_cooloff: timedelta = timedelta(minutes=30)  # capacity / quota errors
    auth_cooloff: timedelta = timedelta(hours=24)  # until an operator fixes the credentials


@dataclass(frozen=True, slots=True)
class Trip:
    """What a failure did to the circuit."""

    key: str
    opened: bool
    open_until: datetime | None
    failures: int


class CircuitBreaker:
    def __init__(self, db: Engine, clock: Clock, settings: CircuitSettings | None = None) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings or CircuitSettings()

    def _row(self, s: Session, key: str) -> OfferingHealthRow:
        row = s.exec(select(OfferingHealthRow).where(OfferingHealthRow.key == key).with_for_update()).first()
        if row is None:
            row = OfferingHealthRow(key=key, consecutive_failures=0, updated_at=self.clock.now())
        return row

    def record_failure(
        self,
        key: str,
        error: str,
        *,
        cooloff: timedelta | None = None,
        base_cooloff: timedelta | None = None,
    ) -> Trip:
        """Count one failure; `cooloff` given: open at once for that long (capacity, quota, auth).

        `base_cooloff` overrides the first cool-off after the threshold, for failures that take
        long to detect (a boot that never finishes): backing off less than that achieves nothing.
        """
        now = self.clock.now()
        st = self.settings
        with open_session(self.db) as s:
            row = self._row(s, key)
            was_open = self._open(row, now)
            row.consecutive_failures += 1
            row.last_error = error[:500]
            row.updated_at = now
            if cooloff is not None:
                row.open_until = now + cooloff
            elif row.consecutive_failures >= st.threshold:
                factor = 2 ** min(row.consecutive_failures - st.threshold, 20)
                row.open_until = now + min((base_cooloff or st.base_cooloff) * factor, st.max_cooloff)
            s.add(row)
            s.commit()
            open_until = row_time(row.open_until)
            opened = not was_open and open_until is not None and open_until > now
            if opened:
                log.warning("circuit.opened", key=key, until=open_until, failures=row.consecutive_failures)
            return Trip(key, opened, open_until, row.consecutive_failures)

    def block_scope(self, key: str, error: str, covered: Iterable[str]) -> Trip:
        """A quota error: open the quota's own key with a cool-off doubling at each repeat, and every
        covered key (the offerings the quota limits) until then, without counting failures against them."""
        now = self.clock.now()
        st = self.settings
        with open_session(self.db) as s:
            row = self._row(s, key)
            was_open = self._open(row, now)
            ended = row_time(row.open_until)
            if ended is not None and now - ended > st.max_cooloff:
                # the last block ended long ago: a new episode, not a repeat (no doubling for ever)
                row.consecutive_failures = 0
            row.consecutive_failures += 1
            factor = 2 ** min(row.consecutive_failures - 1, 20)
            until = now + min(st.unavailable_cooloff * factor, st.max_cooloff)
            row.open_until = until
            row.last_error = error[:500]
            row.updated_at = now
            s.add(row)
            for k in sorted(set(covered)):
                r = self._row(s, k)
                current = row_time(r.open_until)
                if current is None or current < until:
                    r.open_until = until
                r.last_error = error[:500]
                r.updated_at = now
                s.add(r)
            s.commit()
            if not was_open:
                log.warning("circuit.quota_blocked", key=key, until=until, failures=row.consecutive_failures)
            return Trip(key, not was_open, until, row.consecutive_failures)

    def record_success(self, key: str) -> None:
        now = self.clock.now()
        with open_session(self.db) as s:
            row = s.get(OfferingHealthRow, key)
            if row is None or (row.consecutive_failures == 0 and row.open_until is None):
                return
            row.consecutive_failures = 0
            row.open_until = None
            row.updated_at = now
            s.add(row)
            s.commit()

    def reset(self, key: str) -> None:
        """Operator action: close the circuit now (e.g. after fixing credentials)."""
        self.record_success(key)

    @staticmethod
    def _open(row: OfferingHealthRow, now: datetime) -> bool:
        until = row_time(row.open_until)
        return until is not None and until > now

    def is_open(self, key: str) -> bool:
        with open_session(self.db) as s:
            row = s.get(OfferingHealthRow, key)
            return row is not None and self._open(row, self.clock.now())

    def open_keys(self) -> set[str]:
        now = self.clock.now()
        with open_session(self.db) as s:
            rows = s.exec(select(OfferingHealthRow)).all()
            return {r.key for r in rows if self._open(r, now)}

    def unavailable_offerings(self, offerings: Iterable[Offering]) -> frozenset[str]:
        """Offerings whose own circuit or whose backend's circuit is open."""
        keys = self.open_keys()
        return frozenset(
            o.id for o in offerings if offering_key(o.id) in keys or backend_key(o.backend) in keys
        )

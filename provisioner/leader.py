"""Leadership among broker replicas sharing one PostgreSQL database: an advisory lock, a lease and a
fencing token.

* The session advisory lock decides who leads; it lives as long as the connection holding it, so a
  replica that dies loses it at once and a stand-by (polling every few seconds) takes over.
* The lease row (`leader_lease`) carries the **epoch**, raised by one at every take-over, and the
  holder's last renewal (in the database's own time). A leader that hangs with its connection still
  open stops renewing; once its lease has expired a stand-by ends the holder's session
  (`pg_terminate_backend`), which frees the lock.
* The epoch is the fencing token: every write the engine makes as the leader (`acting`) checks it in
  the same transaction (`fence`), so a deposed leader's writes are refused, and the leader checks its
  lease before every provider call (`check`). An operator's action through a stand-by's API is not
  fenced: it is not the leader's.
SQLite is a single-process database: there the one process always leads and nothing is fenced.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import Session

log = structlog.get_logger(__name__)


# Set while the engine acts as the leader (a cycle): only those writes and provider calls are fenced.
# An operator's request served by the API of a stand-by replica (drain a unit) is not the leader's act.
_acting: ContextVar[bool] = ContextVar("provisioner_acting_as_leader", default=False)


class LeadershipLost(Exception):
    """This replica no longer leads: stop acting at once (never caught by per-unit isolation)."""


class Fenced(LeadershipLost):
    """A write carried an old epoch: another replica has taken over since."""


def lock_key(broker_id: str) -> int:
    """A stable signed 64-bit key per broker id (replicas of one broker compete for the same key)."""
    digest = hashlib.sha256(f"provisioner-leader:{broker_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    ttl_seconds: float = 15.0  # a leader that has not renewed for this long may be deposed
    standby_poll_seconds: float = 2.0  # how often a stand-by tries to take over


class Leadership:
    def __init__(self, db: Engine, broker_id: str, settings: LeaseSettings | None = None) -> None:
        self.db = db
        self.broker_id = broker_id
        self.settings = settings or LeaseSettings()
        self.key = lock_key(broker_id)
        self._conn: Connection | None = None
        self.is_leader = False
        self.epoch: int | None = None  # the fencing token while leading

    @property
    def _shared(self) -> bool:
        return self.db.dialect.name == "postgresql"

    # --- taking and keeping the lead ----------------------------------------------------------

    def ensure(self) -> bool:
        """Keep (renewing the lease) or try to take leadership; True while this replica leads."""
        if not self._shared:
            self.is_leader = True
            return True
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.db.connect()
                self.is_leader = False
            if self.is_leader:
                if self._renew(self._conn):
                    return True
                log.warning("leader.fenced", broker=self.broker_id, epoch=self.epoch)
                self._drop()
                return False
            got = self._try_lock(self._conn)
            if not got and self._break_expired(self._conn):
                got = self._try_lock(self._conn)
            if got:
                self.epoch = self._take_over(self._conn)
                log.info("leader.acquired", broker=self.broker_id, epoch=self.epoch)
            self.is_leader = got
            return got
        except DBAPIError as exc:
            log.warning("leader.lost", broker=self.broker_id, error=str(exc).splitlines()[0])
            self._drop()
            return False

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """Within this block, provider calls check the lease and writes carry the fencing token."""
        token = _acting.set(True)
        try:
            yield
        finally:
            _acting.reset(token)

    def check(self) -> None:
        """Before a provider call: raise LeadershipLost unless this replica still holds a live lease."""
        if not self._shared or not _acting.get():
            return
        if not self.is_leader or not self.ensure():
            raise LeadershipLost(f"broker {self.broker_id}: this replica no longer leads")

    def _try_lock(self, conn: Connection) -> bool:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
        conn.commit()  # end the implicit transaction; the session lock stays
        return got

    def _take_over(self, conn: Connection) -> int:
        row = conn.execute(
            text(
                "INSERT INTO leader_lease (broker_id, epoch, holder_pid, renewed_at, expires_at)"
                " VALUES (:b, 1, pg_backend_pid(), now(), now() + make_interval(secs => :ttl))"
                " ON CONFLICT (broker_id) DO UPDATE SET epoch = leader_lease.epoch + 1,"
                " holder_pid = pg_backend_pid(), renewed_at = now(), expires_at = EXCLUDED.expires_at"
                " RETURNING epoch"
            ),
            {"b": self.broker_id, "ttl": self.settings.ttl_seconds},
        ).scalar_one()
        conn.commit()
        return int(row)

    def _renew(self, conn: Connection) -> bool:
        """Extend the lease; False when the epoch moved on (another replica took over)."""
        result = conn.execute(
            text(
                "UPDATE leader_lease SET renewed_at = now(), expires_at = now() + make_interval(secs => :ttl)"
                " WHERE broker_id = :b AND epoch = :e AND holder_pid = pg_backend_pid()"
            ),
            {"b": self.broker_id, "e": self.epoch, "ttl": self.settings.ttl_seconds},
        )
        conn.commit()
        return result.rowcount == 1

    def _break_expired(self, conn: Connection) -> bool:
        """End the session of a holder whose lease expired (hung, not dead): its lock goes with it."""
        pid = conn.execute(
            text("SELECT holder_pid FROM leader_lease WHERE broker_id = :b AND expires_at < now()"),
            {"b": self.broker_id},
        ).scalar()
        conn.commit()
        if pid is None:
            return False
        holds = conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = :p AND granted"
                " AND ((classid::bigint << 32) | objid::bigint) = (:k)::bigint"
            ),
            {"p": pid, "k": self.key},
        ).scalar()
        if not holds:
            conn.commit()
            return False
        ended = bool(conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar())
        conn.commit()
        log.warning("leader.expired_lease_broken", broker=self.broker_id, holder_pid=pid, ended=ended)
        if ended:
            # The lock is freed when the ended session has gone; wait for that, briefly.
            conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT pg_sleep(0.05) FROM generate_series(1, 40)"
                    " WHERE EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :p)) s"
                ),
                {"p": pid},
            )
            conn.commit()
        return ended

    # --- fencing ------------------------------------------------------------------------------

    def fence(self, session: Session) -> None:
        """In a write's own transaction: refuse it (Fenced) unless our epoch is still the current one.

        `FOR SHARE` keeps a take-over (which updates the row) from slipping in before the commit.
        """
        if not self._shared or not _acting.get():
            return
        if self.epoch is None:
            raise Fenced(f"broker {self.broker_id}: this replica never led")
        try:
            current = session.execute(
                text("SELECT epoch FROM leader_lease WHERE broker_id = :b FOR SHARE"), {"b": self.broker_id}
            ).scalar()
        except SQLAlchemyError as exc:
            raise Fenced(f"broker {self.broker_id}: lease unreadable ({type(exc).__name__})") from None
        if current != self.epoch:
            raise Fenced(f"broker {self.broker_id}: epoch {self.epoch} is stale (now {current})")

    # --- letting go ---------------------------------------------------------------------------

    def release(self) -> None:
        if self._conn is not None and self.is_leader and not self._conn.closed:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
            except DBAPIError:
                pass  # closing the connection below releases it anyway
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):
                self._conn.close()
        self._conn = None
        self.is_leader = False

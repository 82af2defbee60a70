"""Leadership among broker replicas sharing one PostgreSQL database, by a session advisory lock.

The lock lives as long as the connection holding it: a replica that dies (or loses its
connection) loses leadership, and a stand-by takes over on its next attempt. SQLite is a
single-process database, so there the one process always leads.
"""

from __future__ import annotations

import contextlib
import hashlib

import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

log = structlog.get_logger(__name__)


class LeadershipLost(Exception):
    """This replica no longer leads: stop acting at once (never caught by per-unit isolation)."""


def lock_key(broker_id: str) -> int:
    """A stable signed 64-bit key per broker id (replicas of one broker compete for the same key)."""
    digest = hashlib.sha256(f"provisioner-leader:{broker_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership:
    def __init__(self, db: Engine, broker_id: str) -> None:
        self.db = db
        self.broker_id = broker_id
        self.key = lock_key(broker_id)
        self._conn: Connection | None = None
        self.is_leader = False

    @property
    def _shared(self) -> bool:
        return self.db.dialect.name == "postgresql"

    def ensure(self) -> bool:
        """Keep or try to take leadership; True while this replica leads."""
        if not self._shared:
            self.is_leader = True
            return True
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.db.connect()
                self.is_leader = False
            if self.is_leader:
                self._conn.execute(text("SELECT 1"))  # still connected means still holding the lock
                return True
            got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            self._conn.commit()  # end the implicit transaction; the session lock stays
            if got:
                log.info("leader.acquired", broker=self.broker_id)
            self.is_leader = got
            return got
        except DBAPIError as exc:
            log.warning("leader.lost", broker=self.broker_id, error=str(exc).splitlines()[0])
            self._drop()
            return False

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

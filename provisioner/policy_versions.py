"""Every policy applied, kept whole as a numbered version (who, when, why), and the one in force.

The newest change wins, whether it came from the policy file or the API: the file is recorded as a new
version when it is read and has changed since; an API change stays in force until the file changes
again (also across restarts). Replicas sharing a database pick up a newer version each cycle.
"""

from __future__ import annotations

import difflib
import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, col, select

import policies
from provisioner.clock import Clock
from provisioner.model import PolicyRow, row_time
from provisioner.policy_source import PolicySource

log = structlog.get_logger(__name__)

FILE_AUTHOR = "file:"


class PolicyChangeRefused(Exception):
    """A valid policy that cannot be applied while the broker runs (the message says what to do)."""


class StaleBaseVersion(Exception):
    """The caller edited an older version than the one in force."""


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    name: str
    sha256: str
    author: str
    comment: str
    applied_at: datetime
    content: str

    @classmethod
    def of(cls, row: PolicyRow) -> PolicyVersion:
        assert row.id is not None
        return cls(
            row.id,
            row.name,
            row.sha256,
            row.author,
            row.comment,
            row_time(row.applied_at) or row.applied_at,
            row.content,
        )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(db: Engine, text: str, *, name: str, author: str, comment: str, now: datetime) -> PolicyVersion:
    with Session(db, expire_on_commit=False) as session:
        row = PolicyRow(
            name=name, sha256=sha256(text), content=text, applied_at=now, author=author, comment=comment
        )
        session.add(row)
        session.commit()
        return PolicyVersion.of(row)


def latest(db: Engine) -> PolicyVersion | None:
    with Session(db) as session:
        row = session.exec(select(PolicyRow).order_by(col(PolicyRow.id).desc()).limit(1)).first()
        return PolicyVersion.of(row) if row is not None else None


def latest_version_number(db: Engine) -> int | None:
    with Session(db) as session:
        return session.exec(select(PolicyRow.id).order_by(col(PolicyRow.id).desc()).limit(1)).first()


def get(db: Engine, version: int) -> PolicyVersion | None:
    with Session(db) as session:
        row = session.get(PolicyRow, version)
        return PolicyVersion.of(row) if row is not None else None


def history(db: Engine, *, offset: int = 0, limit: int = 100) -> list[PolicyVersion]:
    """Versions, newest first."""
    with Session(db) as session:
        rows = session.exec(select(PolicyRow).order_by(col(PolicyRow.id).desc()).offset(offset).limit(limit))
        return [PolicyVersion.of(r) for r in rows]


def diff(old: PolicyVersion, new: PolicyVersion) -> str:
    """A unified diff from `old` to `new`, labelled with the version numbers."""
    return "".join(
        difflib.unified_diff(
            old.content.splitlines(keepends=True),
            new.content.splitlines(keepends=True),
            fromfile=f"policy v{old.version} ({old.author})",
            tofile=f"policy v{new.version} ({new.author})",
        )
    )


def _last_from_file(db: Engine) -> PolicyRow | None:
    with Session(db) as session:
        query = select(PolicyRow).where(col(PolicyRow.author).startswith(FILE_AUTHOR))
        return session.exec(query.order_by(col(PolicyRow.id).desc()).limit(1)).first()


def _site_shapes(policy: policies.Policy) -> set[tuple[object, ...]]:
    """What the backends were built from: each allocation's and backfill pool's offering and node shape."""
    return {
        (o.id, o.backend, o.cores, o.memory_gb, o.arch, o.gpu_model, o.gpu_count)
        for o in policies.site_offerings(policy)
    }


class PolicyKeeper:
    """Versions for the policy source: records the file when it is read, applies API changes atomically
    (validated first, stored, then put in force in one assignment), and picks up other replicas' changes."""

    def __init__(self, db: Engine, source: PolicySource, clock: Clock) -> None:
        self.db = db
        self.source = source
        self.clock = clock
        self.version: int | None = None
        self._file_digest = source.digest
        self._lock = threading.Lock()

    def start(self) -> None:
        """At start the newest change wins: the file if it changed since last recorded, else the newest version."""
        newest = latest(self.db)
        last_file = _last_from_file(self.db)
        if newest is not None and last_file is not None and last_file.sha256 == self.source.digest:
            self.version = newest.version
            if newest.version != last_file.id and not self._put(newest):
                self._record_file()
            return
        self._record_file()

    def _record_file(self) -> None:
        path = self.source.path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return
        if sha256(text) != self.source.digest:
            return  # the file changed again since it was read: recorded when it is put in force
        stored = record(
            self.db,
            text,
            name=path.name,
            author=f"{FILE_AUTHOR}{path}",
            comment="read from the file",
            now=self.clock.now(),
        )
        self.version = stored.version

    def _put(self, stored: PolicyVersion) -> bool:
        try:
            policy = policies.parse_policy(
                stored.content, f"policy v{stored.version}", today=self.clock.now().date()
            )
        except policies.PolicyError as exc:
            log.warning("policy.stored_version_invalid", version=stored.version, error=str(exc))
            return False
        self.source.replace(policy, stored.content)
        self.version = stored.version
        return True

    def sync(self) -> policies.Policy:
        """After the source re-read its file: record a changed file as a new version, or pick up a
        version another replica applied. Returns the policy in force."""
        with self._lock:
            if self.source.digest != self._file_digest:
                self._file_digest = self.source.digest
                self._record_file()
            else:
                newest = latest(self.db)
                if newest is not None and newest.version != self.version:
                    self._put(newest)
        return self.source.policy

    def apply(
        self,
        text: str,
        *,
        author: str,
        comment: str,
        base_version: int | None = None,
        name: str = "policy.toml",
    ) -> PolicyVersion:
        policy = policies.parse_policy(
            text, name, today=self.clock.now().date()
        )  # PolicyError names every line and key; nothing applied
        if _site_shapes(policy) != _site_shapes(self.source.policy):
            raise PolicyChangeRefused(
                "allocations and backfill pools decide which backends run: change them in the policy file "
                "and restart the broker"
            )
        with self._lock:
            current = latest_version_number(self.db)
            if base_version is not None and current != base_version:
                raise StaleBaseVersion(f"the policy in force is version {current}, not {base_version}")
            stored = record(self.db, text, name=name, author=author, comment=comment, now=self.clock.now())
            self.source.replace(policy, text)
            self.version = stored.version
        log.info("policy.applied", version=stored.version, author=author)
        return stored

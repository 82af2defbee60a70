"""The policy in force: read at start-up, re-read when its file changes, replaced whole or not at all.

Every cycle asks for `current()`. The file is read and hashed; when its content changed it is
validated as a whole, and only a valid file replaces the policy in force (one assignment, so a
cycle sees either the old policy or the new one, never a mix). A bad file — a typo, a half-finished
save, a file that disappeared — is refused with its problems logged once, and the last good policy
stays in force.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import structlog

from policies import Policy, PolicyError, parse_policy

log = structlog.get_logger(__name__)

PolicyListener = Callable[[Policy], None]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class PolicySource:
    """One policy file and the last good policy read from it."""

    path: Path
    policy: Policy
    digest: str
    listeners: list[PolicyListener] = field(default_factory=list)
    refused: str | None = None  # digest of the last refused content (reported once, not every cycle)
    unreadable: str | None = None  # last read error (reported once)
    # The day relative dates ("today+10d") count from, read from the broker's clock; a new day
    # re-reads the file like a change of content, so such dates move on with the days.
    today: Callable[[], date] | None = None
    day: date | None = None
    override: str | None = None  # text put in force over the unchanged file (`replace`)

    @classmethod
    def load(cls, path: str | Path, *, today: Callable[[], date] | None = None) -> PolicySource:
        """Read the policy at start-up; a bad file raises `PolicyError` (there is no last good one yet)."""
        file = Path(path)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise PolicyError(str(file), None, "", f"cannot read the file: {exc}") from None
        day = today() if today is not None else None
        return cls(file, _parse(data, str(file), day), _digest(data), today=today, day=day)

    def on_change(self, listener: PolicyListener) -> None:
        """Call `listener` with every new policy put in force."""
        self.listeners.append(listener)

    def replace(self, policy: Policy, text: str | None = None) -> None:
        """Put `policy` (read from `text`) in force: applied through the API, or by another replica. The
        file's digest is kept, so the file takes over again only once its content changes: the newest
        change wins. A new day re-reads `text`, not the file, so relative dates move on in it too."""
        self.policy = policy
        self.override = text
        for listener in self.listeners:
            listener(policy)

    def current(self) -> Policy:
        """The policy in force now, after re-reading the file if its content changed."""
        self.refresh()
        return self.policy

    def refresh(self) -> bool:
        """Re-read the file; True when a new policy was put in force."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            problem = f"cannot read the file: {exc}"
            if problem != self.unreadable:
                log.error("policy.unreadable", file=str(self.path), problem=problem, kept=self.digest[:12])
                self.unreadable = problem
            return False
        self.unreadable = None
        digest = _digest(data)
        day = self.today() if self.today is not None else None
        if digest in (self.digest, self.refused) and day == self.day:
            return False
        if digest == self.digest and self.override is not None:
            data = self.override.encode()  # only the day changed: keep the policy put in force over the file
        try:
            policy = _parse(data, str(self.path), day)
        except PolicyError as exc:
            self.refused = digest
            log.error(
                "policy.refused",
                file=str(self.path),
                problems=[str(p) for p in exc.problems],
                kept=self.digest[:12],
            )
            return False
        if digest != self.digest:
            self.override = None  # the file changed: it is the newest change now
        self.policy, self.digest, self.refused, self.day = policy, digest, None, day
        log.info(
            "policy.reloaded", file=str(self.path), digest=digest[:12], experiments=sorted(policy.experiments)
        )
        for listener in self.listeners:
            listener(policy)
        return True


def _parse(data: bytes, filename: str, today: date | None) -> Policy:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(filename, None, "", f"cannot read the file: {exc}") from None
    return parse_policy(text, filename, today=today)

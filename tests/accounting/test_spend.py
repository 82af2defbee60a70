"""Budgets read the billing model: failed creates cost nothing, live units commit what they will cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlmodel import Session

from accounting.billing import load_units
from provisioner.model import EventRow
from provisioner.spend import spend_in_period
from tests.accounting.test_billing import row

START = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 10, 20, 6, tzinfo=UTC)


def spend(session: Session, commit_hours: float = 1.0) -> dict[str, Decimal]:
    units = load_units(session, START, START + timedelta(days=31), as_of=NOW, include_unbilled=True)
    return spend_in_period(units, period_start=START, period_end=START + timedelta(days=31), now=NOW,
                           commit_hours=commit_hours)  # fmt: skip


def test_forty_failed_or_lost_create_attempts_cost_nothing(session: Session) -> None:
    created = NOW - timedelta(hours=6)
    for i in range(40):  # no launch, no release: the provider never ran them
        state = "failed" if i % 2 else "lost"
        session.add(row(f"ghost{i}", state=state, launched_at=None, released_at=None, created_at=created,
                        state_since=created + timedelta(minutes=1), price_micro_per_hour=4_000_000))  # fmt: skip
    session.commit()
    assert spend(session) == {}


def test_spent_is_billed_time_and_live_units_commit_their_next_hours(session: Session) -> None:
    session.add(row("done", launched_at=NOW - timedelta(hours=3), released_at=NOW - timedelta(hours=1)))
    session.add(row("vm", state="running", launched_at=NOW - timedelta(hours=1), released_at=None))
    session.add(row("booting", state="provisioning", launched_at=None, released_at=None))
    # drained before the broker saw it launch, but it held work from 05:30 until released at 06:00
    session.add(row("drained", launched_at=None, released_at=NOW))
    session.add(
        EventRow(
            at=NOW - timedelta(minutes=30), kind="resource.busy", subject="drained", payload={"busy": True}
        )
    )
    session.commit()
    # done 2 h + vm 1 h + drained 0.5 h billed at $0.40; vm and booting commit one more hour each
    assert spend(session) == {"atlas": Decimal("0.40") * Decimal("3.5") + Decimal("0.80")}

"""Leadership: one replica leads per broker id on PostgreSQL; a stand-by takes over when it lets go."""

from __future__ import annotations

from provisioner.db import make_engine
from provisioner.leader import Leadership, lock_key


def test_only_one_replica_leads_and_a_standby_takes_over(pg_url: str) -> None:
    db_a, db_b = make_engine(pg_url), make_engine(pg_url)
    a, b = Leadership(db_a, "broker-1"), Leadership(db_b, "broker-1")
    other = Leadership(db_b, "broker-2")
    try:
        assert a.ensure() and a.ensure()  # keeps it
        assert not b.ensure()
        assert other.ensure()  # a different broker id is a different lock
        a.release()
        assert b.ensure() and not a.ensure()
    finally:
        for leader in (a, b, other):
            leader.release()
        db_a.dispose()
        db_b.dispose()


def test_sqlite_process_always_leads(sqlite_url: str) -> None:
    db = make_engine(sqlite_url)
    try:
        assert Leadership(db, "x").ensure()
    finally:
        db.dispose()


def test_lock_key_is_stable_and_signed_64_bit() -> None:
    assert lock_key("a") == lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key("a") < 2**63

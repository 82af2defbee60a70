"""Cost ledger: exact hourly money, idle split, list prices, marginal egress tiers, SQL totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlmodel import Session

from accounting.ledger import LEDGER, EgressUsage, build_ledger, ledger_totals, marginal_egress_cost
from provisioner.domain import Arch, EgressTier, Market, Offering
from provisioner.model import CostLedgerRow, ResourceRow

T0 = datetime(2026, 10, 1, tzinfo=UTC)
OCT_END = datetime(2026, 11, 1, tzinfo=UTC)
AWS_TIERS = (
    EgressTier(1, Decimal("0")),
    EgressTier(10240, Decimal("0.09")),
    EgressTier(51200, Decimal("0.085")),
    EgressTier(153600, Decimal("0.07")),
    EgressTier(None, Decimal("0.05")),
)


def resource(rid: str, **over: Any) -> ResourceRow:
    values: dict[str, Any] = {
        "id": rid,
        "backend": "aws",
        "offering_id": "aws:us-east-1:m7i.2xlarge:on_demand",
        "market": "on_demand",
        "experiment": "atlas",
        "state": "released",
        "idempotency_token": f"tok-{rid}",
        "price_micro_per_hour": 400_000,
        "cores": 8,
        "hs23_per_core": 12.5,
        "busy": True,
        "created_at": T0,
        "updated_at": T0,
        "state_since": T0,
        "launched_at": T0,
        "released_at": T0 + timedelta(hours=1),
    }
    values.update(over)
    return ResourceRow(**values)


def offering(oid: str, market: Market, price: str, family: str = "aws:m7i") -> Offering:
    return Offering(
        id=oid, backend="aws", provider="aws", region="us-east-1", instance_type=oid.split(":")[2], family=family,
        market=market, cores=8, memory_gb=32, arch=Arch.X86_64, price_per_hour=Decimal(price), hs23_per_core=12.5,
    )  # fmt: skip


def ledger_rows(session: Session) -> list[CostLedgerRow]:
    return list(session.execute(select(CostLedgerRow).order_by(LEDGER.c.hour, LEDGER.c.kind)).scalars())


def test_hourly_amounts_add_up_exactly_to_price_times_time(session: Session) -> None:
    launched = T0 + timedelta(minutes=50, seconds=7)
    released = launched + timedelta(hours=3, minutes=7, seconds=13)
    session.add(resource("odd", price_micro_per_hour=123_457, launched_at=launched, released_at=released))
    session.commit()
    build_ledger(session, T0, OCT_END)
    rows = ledger_rows(session)
    assert [r.hour.hour for r in rows] == [0, 1, 2, 3]  # 00:50:07 → 03:57:20
    seconds = (released - launched).total_seconds()
    assert sum(r.amount_micro for r in rows) == round(Decimal(123_457) * Decimal(seconds) / 3600)
    assert abs(sum(r.hs23_hours for r in rows) - seconds / 3600 * 8 * 12.5) < 1e-9


def test_idle_time_is_split_out_and_compute_plus_idle_is_what_was_paid(session: Session) -> None:
    # Ran 3 h at $0.40; the last job ended at 02:30, so 30 minutes were paid for nothing.
    session.add(
        resource(
            "idle",
            launched_at=T0,
            released_at=T0 + timedelta(hours=3),
            busy=False,
            idle_since=T0 + timedelta(hours=2, minutes=30),
        )
    )
    session.commit()
    build_ledger(session, T0, OCT_END)
    rows = ledger_rows(session)
    by_kind: dict[str, int] = {}
    for r in rows:
        by_kind[r.kind] = by_kind.get(r.kind, 0) + r.amount_micro
    assert by_kind == {"compute": 1_000_000, "idle": 200_000}
    [idle] = [r for r in rows if r.kind == "idle"]
    assert idle.hour == T0 + timedelta(hours=2) or idle.hour.replace(tzinfo=UTC) == T0 + timedelta(hours=2)
    assert sum(r.hs23_hours for r in rows) == 2.5 * 8 * 12.5  # busy time only


def test_spot_is_listed_at_its_on_demand_twin_and_allocation_at_its_value(session: Session) -> None:
    spot_id = "aws:us-east-1:m7i.2xlarge:spot"
    session.add(resource("spot", offering_id=spot_id, market="spot", price_micro_per_hour=150_000))
    session.add(
        resource("alloc", backend="maxwell", offering_id="slurm:maxwell:cpu-node:allocation", market="allocation",
                 price_micro_per_hour=0)
    )  # fmt: skip
    session.commit()
    offerings = {
        spot_id: offering(spot_id, Market.SPOT, "0.15"),
        "aws:us-east-1:m7i.2xlarge:on_demand": offering(
            "aws:us-east-1:m7i.2xlarge:on_demand", Market.ON_DEMAND, "0.4032"
        ),
    }
    build_ledger(
        session, T0, OCT_END, offerings=offerings,
        list_prices={"slurm:maxwell:cpu-node:allocation": Decimal("2.50")},
    )  # fmt: skip
    rows = {r.resource_id: r for r in ledger_rows(session)}
    assert (rows["spot"].amount_micro, rows["spot"].list_price_micro) == (150_000, 403_200)
    assert rows["spot"].offering_family == "aws:m7i"
    assert (rows["alloc"].amount_micro, rows["alloc"].list_price_micro) == (0, 2_500_000)
    assert rows["alloc"].offering_family == "slurm:cpu-node"  # derived from the id when not in the catalog


def test_rebuilding_a_period_rewrites_the_same_rows(session: Session) -> None:
    session.add(resource("a", released_at=T0 + timedelta(hours=5)))
    session.commit()
    egress = [EgressUsage("a", T0 + timedelta(minutes=10), 5.0, "aws:us-east-1")]
    for _ in range(2):
        build_ledger(session, T0, OCT_END, egress=egress, egress_tiers={"aws:us-east-1": AWS_TIERS})
    count = session.execute(select(func.count()).select_from(CostLedgerRow)).scalar_one()
    assert count == 6  # 5 compute hours + 1 egress row, not twice that
    total = ledger_totals(session, T0, OCT_END, [])[0]
    assert total.amount_micro == 5 * 400_000 + 360_000  # (5 − 1 free GB) × $0.09


def test_marginal_egress_across_tier_edges() -> None:
    # 10,000 GB already sent; 1,000 more: 240 GB at $0.09 up to the 10,240 edge, 760 GB at $0.085.
    assert marginal_egress_cost(1000, 10_000, AWS_TIERS) == Decimal("240") * Decimal("0.09") + 760 * Decimal(
        "0.085"
    )
    assert marginal_egress_cost(0.5, 0, AWS_TIERS) == 0  # inside the free first GB
    assert marginal_egress_cost(2, 0, AWS_TIERS) == Decimal("0.09")
    # beyond the last finite edge the open-ended tier applies
    assert marginal_egress_cost(100, 200_000, AWS_TIERS) == Decimal("5.00")


@given(
    a=st.floats(min_value=0, max_value=200_000, allow_nan=False),
    b=st.floats(min_value=0, max_value=200_000, allow_nan=False),
    used=st.floats(min_value=0, max_value=200_000, allow_nan=False),
)
def test_marginal_egress_is_additive_so_splitting_a_transfer_never_changes_its_price(
    a: float, b: float, used: float
) -> None:
    whole = marginal_egress_cost(a + b, used, AWS_TIERS)
    parts = marginal_egress_cost(a, used, AWS_TIERS) + marginal_egress_cost(b, used + a, AWS_TIERS)
    assert abs(whole - parts) < Decimal("1e-6")
    assert whole <= Decimal(repr(a + b)) * Decimal("0.09") + Decimal("1e-9")


def test_egress_tiers_continue_across_samples_in_the_same_month(session: Session) -> None:
    session.add(resource("a", released_at=T0 + timedelta(hours=2)))
    session.commit()
    egress = [
        EgressUsage("a", T0, 10_000, "aws:us-east-1"),
        EgressUsage("a", T0 + timedelta(hours=1), 1_000, "aws:us-east-1"),
    ]
    build_ledger(session, T0, OCT_END, egress=egress, egress_tiers={"aws:us-east-1": AWS_TIERS})
    rows = [r for r in ledger_rows(session) if r.kind == "egress"]
    assert [r.amount_micro for r in rows] == [
        899_910_000,
        86_200_000,
    ]  # 9,999 × 0.09 ; 240 × 0.09 + 760 × 0.085


def test_totals_by_experiment_backend_family_and_month_in_sql(any_session: Session) -> None:
    s = any_session
    s.add(resource("a1", experiment="atlas", released_at=T0 + timedelta(hours=10)))  # $4.00
    s.add(
        resource(
            "a2",
            experiment="atlas",
            backend="gce",
            offering_id="gce:europe-west4:n2-standard-8:spot",
            market="spot",
            price_micro_per_hour=250_000,
            released_at=T0 + timedelta(hours=4),
        )
    )  # $1.00
    s.add(
        resource(
            "c1", experiment="cms", launched_at=T0 - timedelta(hours=2), released_at=T0 + timedelta(hours=1)
        )
    )
    s.commit()
    build_ledger(s, T0 - timedelta(days=1), OCT_END)
    by_exp = {t.key: t.amount_micro for t in ledger_totals(s, T0, OCT_END, ["experiment"])}
    assert by_exp == {("atlas",): 5_000_000, ("cms",): 400_000}
    by_backend_market = {t.key: t.amount_micro for t in ledger_totals(s, T0, OCT_END, ["backend", "market"])}
    assert by_backend_market == {("aws", "on_demand"): 4_400_000, ("gce", "spot"): 1_000_000}
    by_family = {t.key: t.amount_micro for t in ledger_totals(s, T0, OCT_END, ["offering_family"])}
    assert by_family == {("aws:m7i",): 4_400_000, ("gce:n2-standard-8",): 1_000_000}
    by_month = {t.key: t.amount_micro for t in ledger_totals(s, T0 - timedelta(days=1), OCT_END, ["month"])}
    assert by_month == {("2026-09",): 800_000, ("2026-10",): 5_400_000}
    by_day = {t.key: t.amount_micro for t in ledger_totals(s, T0, OCT_END, ["day"], experiment="atlas")}
    assert by_day == {("2026-10-01",): 5_000_000}


def test_rebuild_drops_hours_that_no_longer_apply(session: Session) -> None:
    row = resource(
        "late", released_at=T0 + timedelta(hours=4), busy=False, idle_since=T0 + timedelta(hours=3)
    )
    session.add(row)
    session.commit()
    build_ledger(session, T0, OCT_END)
    assert {(r.hour.hour, r.kind) for r in ledger_rows(session)} >= {(3, "idle")}
    # the release time is corrected to 02:00 and the unit turns out to have been busy throughout
    row.released_at, row.busy, row.idle_since = T0 + timedelta(hours=2), True, None
    session.add(row)
    session.commit()
    build_ledger(session, T0, OCT_END)
    assert [(r.hour.hour, r.kind) for r in ledger_rows(session)] == [(0, "compute"), (1, "compute")]


def test_ledger_holds_what_the_billing_model_bills_including_units_drained_while_provisioning(
    session: Session,
) -> None:
    from accounting.billing import load_units, spent_micro
    from provisioner.model import EventRow

    session.add(resource("ran", released_at=T0 + timedelta(hours=2, minutes=10)))
    # drained before the broker saw it launch, but a listing saw it holding work from 01:00
    session.add(resource("drained", launched_at=None, busy=False, released_at=T0 + timedelta(hours=3)))
    session.add(
        EventRow(at=T0 + timedelta(hours=1), kind="resource.busy", subject="drained", payload={"busy": True})
    )
    session.add(resource("phantom", state="failed", launched_at=None, released_at=None))
    session.commit()
    build_ledger(session, T0, OCT_END, now=OCT_END)
    [total] = ledger_totals(session, T0, OCT_END, [])
    billed = spent_micro(load_units(session, T0, OCT_END, as_of=OCT_END), T0, OCT_END, as_of=OCT_END)
    assert total.amount_micro == billed == 866_667 + 800_000
    assert {r.resource_id for r in ledger_rows(session)} == {"ran", "drained"}
    assert total.hs23_hours_held == pytest.approx((2 + 1 / 6 + 2) * 100)

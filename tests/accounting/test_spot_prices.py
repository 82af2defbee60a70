"""Spot time is billed at the price in force over each interval, in the zone the unit ran in."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlmodel import Session

from accounting.billing import load_units, spent_micro
from accounting.ledger import build_ledger, ledger_totals
from accounting.spot_prices import StoredSpotPrices, collect_spot_prices, store_spot_prices
from backends.base import SpotPrice
from tests.accounting.test_billing import T0, row

ITYPE = "m7i.2xlarge"
END = T0 + timedelta(days=5)


def prices(session: Session) -> None:
    store_spot_prices(session, "aws", [
        SpotPrice(ITYPE, "us-east-1a", T0 - timedelta(days=1), Decimal("0.10")),  # in force at launch
        SpotPrice(ITYPE, "us-east-1a", T0 + timedelta(hours=1), Decimal("0.30")),
        SpotPrice(ITYPE, "us-east-1b", T0 - timedelta(days=1), Decimal("0.90")),  # the dearest zone
    ])  # fmt: skip


def test_spot_time_is_billed_at_the_price_in_force_in_the_zone_used(session: Session) -> None:
    prices(session)
    session.add(row("a", zone="us-east-1a", price_micro_per_hour=900_000))  # created at the dearest price
    session.add(row("nozone", zone=None, price_micro_per_hour=900_000))
    session.commit()
    units = {
        u.resource_id: u for u in load_units(session, T0, END, as_of=END, prices=StoredSpotPrices(session))
    }
    # 1 h at $0.10 then 1 h at $0.30 in us-east-1a, not 2 h at the $0.90 it was budgeted at
    assert spent_micro([units["a"]], T0, END, as_of=END) == 400_000
    assert spent_micro([units["nozone"]], T0, END, as_of=END) == 1_800_000  # zone unknown: price recorded
    build_ledger(session, T0, END, now=END, prices=StoredSpotPrices(session))
    [total] = ledger_totals(session, T0, END, [])
    assert total.amount_micro == 400_000 + 1_800_000


def test_storing_the_same_history_twice_changes_nothing(session: Session) -> None:
    prices(session)
    prices(session)
    session.add(row("a", zone="us-east-1a"))
    session.commit()
    [unit] = load_units(session, T0, END, as_of=END, prices=StoredSpotPrices(session))
    assert [p for _, p in unit.price_changes] == [100_000, 300_000]


async def test_collect_asks_for_the_types_the_fleet_ran_per_region(session: Session) -> None:
    session.add(row("a", zone="us-east-1a"))
    session.add(row("od", offering_id="aws:us-east-1:c7i.large:on_demand", market="on_demand"))
    session.commit()
    asked = []

    async def fetch(region: str, types: list[str], start: object, end: object) -> list[SpotPrice]:
        asked.append((region, list(types)))
        return [SpotPrice(ITYPE, "us-east-1a", T0, Decimal("0.2"))]

    assert await collect_spot_prices(session, "aws", fetch, T0 - timedelta(days=1), END) == 1
    assert asked == [("us-east-1", [ITYPE])]  # spot units only


def test_collect_fetches_spot_history_first_and_a_failing_backend_keeps_recorded_prices(
    session: Session,
) -> None:
    from dataclasses import dataclass, field
    from typing import Any

    from sqlalchemy import func, select

    from accounting.period import Month
    from backends.base import Throttled
    from provisioner.cli.accounting import _fetch_spot_prices
    from provisioner.model import SpotPriceRow

    session.add(row("a", zone="us-east-1a"))
    session.add(
        row("b", backend="aws-eu", zone="eu-west-1a", offering_id="aws-eu:eu-west-1:m7i.2xlarge:spot")
    )
    session.commit()
    calls: list[str] = []

    class Ec2:
        async def spot_price_history(self, region: str, types: Any, start: Any, end: Any) -> list[SpotPrice]:
            return [SpotPrice(ITYPE, "us-east-1a", T0, Decimal("0.2"))]

    class Broken:
        async def spot_price_history(self, *args: Any) -> list[SpotPrice]:
            calls.append("aws-eu")
            raise Throttled("aws-eu", "rate exceeded")

    @dataclass
    class FakeBroker:
        db: Any
        backends: dict[str, Any] = field(default_factory=dict)

    broker = FakeBroker(session.get_bind(), {"aws": Ec2(), "aws-eu": Broken(), "sim": object()})
    _fetch_spot_prices(broker, Month.of(T0))  # type: ignore[arg-type]
    assert session.execute(select(func.count()).select_from(SpotPriceRow)).scalar_one() == 1
    assert calls == ["aws-eu"]  # it was asked, failed, and the rest went on

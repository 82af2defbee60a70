"""The billing model's figures on a broker database (e.g. the demo's): what issue 12 measured by hand.

    python -m benchmarks.money_figures .provisioner/demo/demo.db [--as-of 2026-11-24T02:00Z]

Prints units with no launch time and whether they ran, what is billed, the idle share, HS23-hours
held and delivered, and the failed or lost creates that never launched (billed $0).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from decimal import Decimal

from sqlmodel import Session, select

from accounting.billing import events_for, load_units, slices, usage
from accounting.spot_prices import StoredSpotPrices
from provisioner.db import make_engine
from provisioner.model import ResourceRow, row_time

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", help="SQLite file of a broker")
    parser.add_argument("--as-of", help="ISO time (UTC); default: the latest update in the database")
    args = parser.parse_args()
    db = make_engine(f"sqlite:///{args.database}")
    with Session(db) as session:
        rows = list(session.exec(select(ResourceRow)))
        events = events_for(session, [r.id for r in rows])
        latest = max((row_time(r.updated_at) or EPOCH for r in rows), default=EPOCH)
        as_of = datetime.fromisoformat(args.as_of.replace("Z", "+00:00")) if args.as_of else latest
        units = load_units(session, EPOCH, as_of, as_of=as_of, prices=StoredSpotPrices(session))
    db.dispose()
    no_launch = [r for r in rows if r.launched_at is None]
    ran = [r for r in no_launch if any(kind == "resource.busy" for kind, _, _ in events.get(r.id, []))]
    phantom = [r for r in no_launch if r.state in ("failed", "lost")]
    total = usage(p for u in units for p in slices(u, EPOCH, as_of, as_of=as_of))
    money = Decimal(total.amount_micro) / 1_000_000
    idle = Decimal(total.idle_micro) / 1_000_000
    print(f"as of {as_of:%Y-%m-%d %H:%M} UTC: {len(rows)} resources, {len(no_launch)} without a launch time, "
          f"{len(ran)} of them seen holding work (billed from that sighting: "
          f"{sum(u.launch_estimated for u in units)})")  # fmt: skip
    print(f"billed ${money:,.2f}; idle ${idle:,.2f} ({100 * idle / money if money else 0:.1f} %)")
    print(f"HS23-hours held {total.hs23_hours_held:,.0f}, delivered {total.hs23_hours_delivered:,.0f}")
    print(f"failed or lost creates that never launched: {len(phantom)}, billed $0")


if __name__ == "__main__":
    main()

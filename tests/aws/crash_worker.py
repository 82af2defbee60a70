"""Runs the real actuator with the EC2 backend against moto in a separate process, for the crash tests.

First run: records one intent and provisions it (`PROVISIONER_CRASH_AT` kills it on the way).
Later runs: only resume `requested` rows, as the engine does at the start of a cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from decimal import Decimal
from pathlib import Path

from backends.aws import AwsBackend
from backends.aws_config import AwsConfig, AwsRegionConfig, ImageChoice
from provisioner.actuator import ActOutcome, Actuator
from provisioner.circuit import CircuitBreaker
from provisioner.clock import SystemClock
from provisioner.db import open_database
from provisioner.domain import CostBreakdown, PlanItem
from provisioner.store import Store
from tests.aws.conftest import BROKER, CATALOG, REGION
from tests.aws.moto_indexed import AMIS

OFFERING = CATALOG[0]  # m6i.large on-demand


def config(endpoint: str, credentials: Path) -> AwsConfig:
    return AwsConfig(
        broker_id=BROKER,
        regions=[AwsRegionConfig(region=REGION, images=ImageChoice(**AMIS))],
        profile="broker",
        credentials_file=credentials,
        endpoint_url=endpoint,
    )


async def run(db_url: str, endpoint: str, credentials: Path, first: bool) -> dict[str, list[str]]:
    db = open_database(db_url)
    clock = SystemClock()
    store = Store(db, clock, BROKER)
    backend = AwsBackend(config(endpoint, credentials), CATALOG)
    actuator = Actuator(store, CircuitBreaker(db, clock), {OFFERING.backend: backend}, clock)
    offerings = {o.id: o for o in CATALOG}
    outcome = ActOutcome()
    if first:
        item = PlanItem(
            group_id="grp-1",
            offering_id=OFFERING.id,
            units=1,
            jobs=1,
            hours=1.0,
            cost=OFFERING.price_per_hour,
            cost_per_hs23_hour=CostBreakdown(compute=Decimal(0)),
        )
        await actuator.execute([item], offerings, {"grp-1": "atlas"}, outcome)
    else:
        await actuator.resume_requested(offerings, outcome)
    await backend.close()
    db.dispose()
    return {"created": outcome.created, "resumed": outcome.resumed, "failed": outcome.failed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--first", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.db, args.endpoint, args.credentials, args.first))))


if __name__ == "__main__":
    main()

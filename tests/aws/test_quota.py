"""EC2 quota errors block what the quota covers, and the demand goes elsewhere in the same cycle."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from backends.aws import AwsBackend
from backends.base import QuotaExceeded
from provisioner.clock import SimulatedClock
from provisioner.db import open_database
from provisioner.domain import LIVE_STATES, Market
from provisioner.store import Store
from tests.engine.harness import build_engine
from tests.engine.toy import StaticSource, jobs

from .conftest import BROKER, CATALOG, offering
from .faultproxy import Fault, FaultProxy
from .test_backend_moto import request

pytestmark = pytest.mark.moto

SPOT_QUOTA = (
    "Max spot instance count exceeded"  # what EC2 says for MaxSpotInstanceCountExceeded
)
VCPU_QUOTA = (
    "You have requested more vCPU capacity than your current vCPU limit of 32 allows for the instance "
    "bucket that the specified instance type belongs to."
)


async def test_spot_instance_count_quota_covers_every_spot_offering_of_the_region(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    proxy.faults.append(Fault("RunInstances", 400, "MaxSpotInstanceCountExceeded", SPOT_QUOTA))
    backend = via_proxy()
    with pytest.raises(QuotaExceeded) as err:
        await backend.provision(request(offering("m6i.large", Market.SPOT)))
    scope = err.value.scope
    assert scope is not None and scope.market is Market.SPOT and scope.region == "us-east-1"
    assert {o.id for o in CATALOG if scope.covers(o)} == {o.id for o in CATALOG if o.market is Market.SPOT}
    await backend.close()


async def test_vcpu_limit_covers_the_vcpu_bucket_of_that_market_only(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    proxy.faults.append(Fault("RunInstances", 400, "VcpuLimitExceeded", VCPU_QUOTA))
    backend = via_proxy()
    with pytest.raises(QuotaExceeded) as err:
        await backend.provision(request(offering("m6i.large")))
    scope = err.value.scope
    assert scope is not None and scope.quota == "L-1216C47A" and scope.limit == 32
    covered = {o.instance_type for o in CATALOG if scope.covers(o)}
    # Standard on-demand types share the bucket; the G type and every spot offering do not.
    assert covered == {"m6i.large", "c6i.large", "m7g.large"}
    assert not any(scope.covers(o) for o in CATALOG if o.market is Market.SPOT)
    await backend.close()


async def test_offerings_leave_out_what_the_accounts_quotas_rule_out(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend]
) -> None:
    body = json.dumps(
        {
            "Quotas": [
                {"ServiceCode": "ec2", "QuotaCode": "L-1216C47A", "Value": 640.0},
                {"ServiceCode": "ec2", "QuotaCode": "L-34B43A08", "Value": 0.0},  # no standard spot at all
            ]
        }
    )
    proxy.faults.append(Fault("ListServiceQuotas", 200, body=body, content_type="application/x-amz-json-1.1"))
    backend = via_proxy()
    ids = {o.id for o in await backend.offerings()}
    assert not any(o.market is Market.SPOT and o.id in ids for o in CATALOG)
    assert offering("m6i.large").id in ids and offering("g5.xlarge").id in ids
    assert proxy.count("ListServiceQuotas") == 1
    spot_reads = proxy.count("DescribeSpotPriceHistory")
    await backend.offerings()
    assert proxy.count("ListServiceQuotas") == 1  # read once, not every cycle
    assert proxy.count("DescribeSpotPriceHistory") == spot_reads  # spot prices too, within a minute
    await backend.close()


@pytest.fixture
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = open_database(f"sqlite:///{tmp_path_factory.mktemp('quota') / 'q.db'}")
    yield eng
    eng.dispose()


async def test_spot_quota_exhausted_serves_the_demand_on_demand_in_the_same_cycle(
    proxy: FaultProxy, via_proxy: Callable[..., AwsBackend], db: Engine
) -> None:
    """The issue's case: spot quota gone, on-demand available: one refused spot call, then on-demand."""
    proxy.faults.append(
        Fault("RunInstances", 400, "MaxSpotInstanceCountExceeded", SPOT_QUOTA, when="MarketType=spot")
    )
    clock = SimulatedClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    store = Store(db, clock, BROKER)
    backend = via_proxy()
    source = StaticSource(jobs=jobs("atlas", 4, cores=2))
    engine = build_engine(store, {"aws": backend}, source)
    report = await engine.run_cycle()
    spot_calls = sum(1 for a in proxy.seen if a == "RunInstances") - len(report.act.created)
    assert spot_calls == 1, "one quota error must block every spot offering it covers"
    live = store.resources(states=LIVE_STATES)
    assert len(live) == 4 and {r.market for r in live} == {str(Market.ON_DEMAND)}
    assert report.replans >= 1
    [blocked] = store.events(kind="quota.blocked")
    assert "every market" not in blocked.payload["scope"] and "spot" in blocked.payload["scope"]
    # Exponential cool-off: the quota's second refusal blocks twice as long.
    first = engine.circuit.block_scope("quota:test", "again", [])
    second = engine.circuit.block_scope("quota:test", "again", [])
    assert first.open_until is not None and second.open_until is not None
    now = clock.now()
    assert second.open_until - now == 2 * (first.open_until - now) or second.open_until - now == timedelta(hours=6)
    await backend.close()

"""The backends file: real backends wired from TOML, and a whole engine cycle against moto over HTTP."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import boto3
import pytest

from provisioner.admission import admit_spec
from provisioner.backend_config import BackendConfigError, load_backends
from provisioner.broker import build_broker
from provisioner.domain import ResourceState
from provisioner.requests import BurstRequestSpec, cancel
from provisioner.settings import Settings
from tests.aws.conftest import KEY_ID, REGION, SECRET, aws_backends_table


def test_broken_backends_file_names_every_table_and_key_and_builds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(
        """
[aws]
kind = "aws"
regoins = []

[tape]
kind = "tape-robot"

[maxwell]
kind = "slurm_allocation"
"""
    )
    with pytest.raises(BackendConfigError) as err:
        load_backends(path, broker_id="b", catalog=(), site_offerings=())
    text = str(err.value)
    assert str(path) in text
    assert "[aws] regoins: Extra inputs are not permitted" in text
    assert "[aws] regions: Field required" in text
    assert "[tape] kind: 'tape-robot' is not one of" in text
    assert "[maxwell] kind = 'slurm_allocation' but the policy has no allocation offering" in text


def test_engine_cycle_provisions_on_aws_from_the_backends_file_and_cancel_releases(
    tmp_path: Path, moto: str, amis: dict[str, str], credentials_file: Path
) -> None:
    import asyncio

    path = tmp_path / "backends.toml"
    path.write_text(aws_backends_table(moto, amis, credentials_file))
    settings = Settings(state_dir=tmp_path, broker_id="broker-file-test", backends_file=path)
    broker = build_broker(settings)
    assert list(broker.backends) == ["aws"]

    spec = BurstRequestSpec(experiment="atlas", cores=64, duration_hours=2, max_cost_usd=Decimal(100))
    admitted = admit_spec(broker, spec)
    assert admitted.admission.accepted, admitted.admission.reason
    assert all(o.startswith(f"aws:{REGION}:") for o in admitted.offerings)

    async def cycles(n: int) -> None:
        for _ in range(n):
            await broker.engine.run_cycle()

    asyncio.run(cycles(1))
    ec2 = boto3.client(
        "ec2", region_name=REGION, endpoint_url=moto, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )

    def tagged(states: tuple[str, ...]) -> list[dict[str, object]]:
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": "tag:provisioner-broker", "Values": ["broker-file-test"]},
                {"Name": "instance-state-name", "Values": list(states)},
            ]
        )
        return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]

    live_rows = broker.store.resources(
        states=[ResourceState.REQUESTED, ResourceState.PROVISIONING, ResourceState.RUNNING]
    )
    instances = tagged(("pending", "running"))
    assert live_rows and len(instances) == len(live_rows)  # every VM tracked, none doubled
    assert {r.request_id for r in live_rows} == {admitted.row.id}
    assert {r.provider_id.split("/")[-1] for r in live_rows if r.provider_id} == {
        str(i["InstanceId"]) for i in instances
    }

    cancel(broker.db, admitted.row.id)  # no demand left: no jobs, no cost
    asyncio.run(cycles(2))
    assert tagged(("pending", "running")) == []
    assert all(r.state == ResourceState.RELEASED for r in broker.store.resources())

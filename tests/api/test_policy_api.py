"""The policy as an API object: read, replace atomically (or not at all), versions with who and when, diffs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from provisioner.api import create_app
from provisioner.api.auth_config import AuthConfig, GroupGrant, StaticToken
from provisioner.api.context import ApiSettings
from provisioner.broker import EXAMPLE_POLICY, Broker, build_broker
from provisioner.bus import InProcessBus
from provisioner.settings import Settings
from tests.api.conftest import LiveServer, broker_factory, serve

EXAMPLE = EXAMPLE_POLICY.read_text()
CHEAPER = EXAMPLE.replace('[experiments.atlas.budgets]\nmonthly = "50000"', '[experiments.atlas.budgets]\nmonthly = "40000"')


def static(token: str, scopes: str, group: str) -> StaticToken:
    return StaticToken(token=token, subject=token, scopes=scopes.split(), groups=[group])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = AuthConfig(
        groups={"/ops": GroupGrant(all_experiments=True), "/lsst": GroupGrant(experiment="lsst")},
        static_tokens=[
            static("alice-ops", "policy:read policy:write resource:read", "/ops"),
            static("reader", "policy:read", "/lsst"),
            static("lsst-admin", "policy:read policy:write", "/lsst"),
        ],
    )
    app = create_app(broker_factory(tmp_path_factory.mktemp("policy")), settings=ApiSettings(auth=config))
    yield from serve(app)


def client(server: LiveServer, token: str) -> httpx.Client:
    return server.client(token)


def test_policy_api_keeps_every_version_applies_atomically_and_plans_record_the_version(server: LiveServer) -> None:
    with client(server, "alice-ops") as ops, client(server, "reader") as reader:
        first = reader.get("/v1/policy").json()
        assert first["version"] == 1 and first["author"].startswith("file:")
        assert first["content"] == EXAMPLE

        # an invalid document: every problem by line and key, nothing applied
        broken = CHEAPER.replace('monthly = "40000"', 'monthly = "-5"').replace("share = 2.0", "shar = 2.0")
        refused = ops.put("/v1/policy", json={"content": broken})
        assert refused.status_code == 422
        problems = refused.json()["problems"]
        assert {p["key"] for p in problems} >= {"experiments.atlas.shar", "experiments.atlas.budgets.monthly"}
        assert all(p["line"] for p in problems)
        assert reader.get("/v1/policy").json()["version"] == 1

        applied = ops.put("/v1/policy", json={"content": CHEAPER, "comment": "Q3 cut", "base_version": 1})
        assert applied.status_code == 200, applied.text
        assert applied.json()["version"] == 2 and applied.json()["author"] == "alice-ops"
        budget = server.context.broker.constraints.policy.experiments["atlas"].budgets.monthly
        assert str(budget) == "40000", "the engine's next cycle plans under the new policy"

        stale = ops.put("/v1/policy", json={"content": EXAMPLE, "base_version": 1})
        assert stale.status_code == 409 and "version 2" in stale.json()["detail"]

        history = reader.get("/v1/policy/versions").json()
        assert [(v["version"], v["author"], v["comment"]) for v in history][:1] == [(2, "alice-ops", "Q3 cut")]
        assert [v["version"] for v in history] == [2, 1]
        diff = reader.get("/v1/policy/diff", params={"from": 1}).json()
        assert diff["to_version"] == 2
        assert '-monthly = "50000"' in diff["diff"] and '+monthly = "40000"' in diff["diff"]
        assert reader.get("/v1/policy/versions/1").json()["content"] == EXAMPLE
        assert reader.get("/v1/policy/versions/99").status_code == 404

        report = server.call(server.context.broker.engine.run_cycle())
        stored = ops.get("/v1/decisions", params={"plan_id": report.plan_ids[0]}).json()
        assert stored[0]["policy_version"] == 2


def test_only_operators_write_the_policy_and_readers_need_the_scope(server: LiveServer) -> None:
    with client(server, "lsst-admin") as experiment_admin:
        refused = experiment_admin.put("/v1/policy", json={"content": EXAMPLE})
        assert refused.status_code == 403 and "/ops" in refused.json()["detail"]
    with client(server, "reader") as reader:
        no_scope = reader.put("/v1/policy", json={"content": EXAMPLE})
        assert no_scope.status_code == 403 and "policy:write" in no_scope.json()["detail"]


def test_allocations_cannot_change_while_running(server: LiveServer) -> None:
    reshaped = EXAMPLE.replace('name = "a100x4"\ncores = 64', 'name = "a100x4"\ncores = 32')
    assert reshaped != EXAMPLE
    with client(server, "alice-ops") as ops:
        response = ops.put("/v1/policy", json={"content": reshaped})
        assert response.status_code == 409, response.text
        assert "restart" in response.json()["detail"]


def test_a_restart_keeps_an_api_change_unless_the_file_changed_since(tmp_path: Path) -> None:
    file = tmp_path / "policy.toml"
    file.write_text(EXAMPLE)
    settings = Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}", policy_file=file)

    def start() -> Broker:
        return build_broker(settings, bus=InProcessBus())

    first = start()
    assert first.policy_keeper is not None
    stored = first.policy_keeper.apply(CHEAPER, author="alice", comment="")
    first.db.dispose()

    again = start()
    assert again.policy_keeper is not None and again.policy_keeper.version == stored.version
    assert str(again.policy.experiments["atlas"].budgets.monthly) == "40000"
    again.db.dispose()

    file.write_text(EXAMPLE.replace('monthly = "50000"', 'monthly = "45000"'))
    edited = start()
    assert edited.policy_keeper is not None and edited.policy_keeper.version == stored.version + 1
    assert str(edited.policy.experiments["atlas"].budgets.monthly) == "45000"
    edited.db.dispose()


def test_a_replica_picks_up_a_version_another_applied(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}")
    one, two = build_broker(settings, bus=InProcessBus()), build_broker(settings, bus=InProcessBus())
    assert one.policy_keeper is not None and two.policy_keeper is not None
    one.policy_keeper.apply(CHEAPER, author="alice", comment="")
    two.policy_keeper.sync()
    assert str(two.policy.experiments["atlas"].budgets.monthly) == "40000"
    assert two.policy_keeper.version == one.policy_keeper.version
    one.db.dispose()
    two.db.dispose()


def test_an_api_change_survives_the_daily_reread_of_an_unchanged_file(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from provisioner.clock import SimulatedClock

    clock = SimulatedClock(datetime(2026, 3, 14, 9, tzinfo=UTC))
    settings = Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}")
    broker = build_broker(settings, clock=clock, bus=InProcessBus())
    assert broker.policy_keeper is not None
    broker.policy_keeper.apply(CHEAPER, author="alice", comment="")
    clock.advance(2 * 86400)  # relative dates move on: the source re-reads the policy in force
    broker.constraints.source.current()
    broker.policy_keeper.sync()
    assert str(broker.policy.experiments["atlas"].budgets.monthly) == "40000"
    broker.db.dispose()

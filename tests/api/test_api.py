"""The REST API over real HTTP: burst requests, offerings, the explained plan, resources, events, auth, health."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from provisioner.api import create_app
from provisioner.api.context import ApiSettings
from provisioner.broker import Broker
from provisioner.circuit import backend_key
from provisioner.db import make_engine
from tests.api.conftest import LiveServer, broker_factory, serve

CPU_REQUEST = {"experiment": "atlas", "cores": 64, "duration_hours": 12}


def create(client: httpx.Client, body: dict[str, object]) -> dict[str, object]:
    response = client.post("/v1/requests", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


# --- burst requests ---------------------------------------------------------------------------------


def test_request_within_policy_is_admitted_with_an_estimate_and_the_chosen_offerings(
    client: httpx.Client,
) -> None:
    created = create(client, CPU_REQUEST)
    assert created["status"] == "admitted"
    assert str(created["id"]).startswith("req-")
    assert str(created["reason"]).startswith("estimated $")
    assert Decimal(str(created["estimated_cost_usd"])) >= 0
    assert created["offerings"], "an admitted request names where the estimate places it"


def test_request_from_an_experiment_outside_the_policy_is_stored_as_rejected_with_the_reason(
    client: httpx.Client,
) -> None:
    created = create(client, {"experiment": "nobody", "cores": 8, "duration_hours": 1})
    assert created["status"] == "rejected"
    assert "'nobody' is not in the policy" in str(created["reason"])
    shown = client.get(f"/v1/requests/{created['id']}").json()
    assert shown["status"] == "rejected"
    assert shown["resources"] == []


def test_gpu_request_over_the_experiments_gpu_limit_is_rejected(client: httpx.Client) -> None:
    created = create(client, {"experiment": "atlas", "gpus": 4, "duration_hours": 2})
    assert created["status"] == "rejected"
    assert "GPUs" in str(created["reason"])


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        ({"experiment": "atlas", "cores": -8, "duration_hours": 1}, "body.cores", "greater than 0"),
        ({"experiment": "atlas", "cores": 8, "duration_hours": "soon"}, "body.duration_hours", "number"),
        ({"experiment": "atlas", "corez": 8, "duration_hours": 1}, "body.corez", "not permitted"),
        ({"experiment": "atlas", "cores": 8, "gpus": 1, "duration_hours": 1}, "body", "exactly one of cores"),
        (
            {"experiment": "atlas", "cores": 8, "duration_hours": 1, "data_location": "s3"},
            "body.data_location",
            "<provider>:<region>",
        ),
    ],
)
def test_invalid_request_is_a_422_naming_the_field_and_the_problem(
    client: httpx.Client, body: dict[str, object], where: str, problem: str
) -> None:
    response = client.post("/v1/requests", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert f"{where}: " in payload["message"]
    assert problem in payload["message"]
    assert any(".".join(map(str, e["loc"])) == where for e in payload["detail"])


def test_requests_are_listed_by_experiment_shown_and_cancelled(client: httpx.Client) -> None:
    atlas = create(client, CPU_REQUEST)
    lsst = create(client, {"experiment": "lsst", "cores": 16, "duration_hours": 2, "archs": ["arm64"]})

    listed = client.get("/v1/requests", params={"experiment": "atlas"}).json()
    ids = [r["id"] for r in listed]
    assert atlas["id"] in ids and lsst["id"] not in ids
    assert all(r["experiment"] == "atlas" for r in listed)

    shown = client.get(f"/v1/requests/{atlas['id']}")
    assert shown.status_code == 200
    assert shown.json()["status"] == "admitted"
    assert shown.json()["spec"]["cores"] == 64
    assert Decimal(shown.json()["cost_so_far_usd"]) == 0

    cancelled = client.delete(f"/v1/requests/{atlas['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert client.get(f"/v1/requests/{atlas['id']}").json()["status"] == "cancelled"
    # Cancelling twice changes nothing and is not an error.
    assert client.delete(f"/v1/requests/{atlas['id']}").json()["status"] == "cancelled"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_request_id_is_a_404_naming_the_id(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/v1/requests/req-doesnotexist")
    assert response.status_code == 404
    assert response.json() == {"detail": "no burst request with id 'req-doesnotexist'"}


# --- offerings --------------------------------------------------------------------------------------


def test_offerings_filter_returns_only_matches_cheapest_first(client: httpx.Client) -> None:
    response = client.get("/v1/offerings", params={"arch": "arm64", "market": "spot", "limit": 20})
    assert response.status_code == 200
    body = response.json()
    offers = body["offerings"]
    assert 0 < len(offers) <= 20 < body["matched"]
    assert all(o["arch"] == "arm64" and o["market"] == "spot" for o in offers)
    prices = [Decimal(o["price_per_hour_usd"]) for o in offers]
    assert prices == sorted(prices)


def test_offerings_filter_by_gpu_model_and_max_price(client: httpx.Client) -> None:
    body = client.get("/v1/offerings", params={"gpu_model": "a100", "max_price": "5", "limit": 500}).json()
    assert body["offerings"]
    assert all(o["gpu_model"] == "A100" and Decimal(o["price_per_hour_usd"]) <= 5 for o in body["offerings"])


def test_offerings_include_the_policys_hpc_allocations(client: httpx.Client) -> None:
    body = client.get("/v1/offerings", params={"market": "allocation"}).json()
    assert {o["backend"] for o in body["offerings"]} >= {"perlmutter", "polaris"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"market": "cheap"}, "market"),
        ({"arch": "sparc"}, "arch"),
        ({"max_price": "-1"}, "max_price"),
        ({"max_price": "lots"}, "max_price"),
        ({"gpu": "maybe"}, "gpu"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_bad_offerings_filter_is_a_422_naming_it(
    client: httpx.Client, params: dict[str, str], field: str
) -> None:
    response = client.get("/v1/offerings", params=params)
    assert response.status_code == 422
    payload = response.json()
    assert payload["message"].startswith(f"query.{field}: ")
    assert payload["detail"][0]["loc"] == ["query", field]


def test_bad_market_filter_lists_the_valid_markets(client: httpx.Client) -> None:
    message = client.get("/v1/offerings", params={"market": "cheap"}).json()["message"]
    assert "on_demand" in message and "spot" in message


# --- plan, resources, events, decisions --------------------------------------------------------------


def test_plan_explains_each_request_group_and_changes_nothing(live: LiveServer, client: httpx.Client) -> None:
    created = create(client, {"experiment": "lsst", "cores": 32, "duration_hours": 6, "archs": ["arm64"]})
    resources_before = client.get("/v1/resources").json()
    plans_before = client.get("/v1/events", params={"kind": "plan.created"}).json()

    response = client.get("/v1/plan", params={"alternatives": 3})
    assert response.status_code == 200
    plan = response.json()
    assert plan["dry_run"] is True
    group = f"request:{created['id']}"
    explanation = next(e for e in plan["explanations"] if e["group_id"] == group)
    assert explanation["experiment"] == "lsst"
    assert explanation["chosen"], "a request inside the policy gets an offering"
    chosen = explanation["chosen"][0]
    breakdown = chosen["cost_per_hs23_hour"]
    parts = ("compute", "interruption", "egress", "startup", "allocation_value")
    assert Decimal(breakdown["total"]) == sum(Decimal(breakdown[p]) for p in parts)
    assert 0 < len(explanation["rejected"]) <= 3
    assert all(r["reason"] and r["offering_id"] for r in explanation["rejected"])
    assert any(i["group_id"] == group for i in plan["items"])

    assert client.get("/v1/resources").json() == resources_before
    assert client.get("/v1/events", params={"kind": "plan.created"}).json() == plans_before


def wait_for_metric(client: httpx.Client, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics").text
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_after_a_cycle_resources_events_decisions_and_metrics_show_it(
    live: LiveServer, client: httpx.Client
) -> None:
    created = create(client, {"experiment": "atlas", "cores": 128, "duration_hours": 8})
    report = live.call(live.context.broker.engine.run_cycle())
    assert report.plan_ids and report.act.created

    # Resources: filters by state, backend and experiment.
    everything = client.get("/v1/resources", params={"experiment": "atlas"}).json()
    mine = [r for r in everything if r["group_id"] == f"request:{created['id']}"]
    assert mine and all(r["experiment"] == "atlas" for r in everything)
    backend, state = mine[0]["backend"], mine[0]["state"]
    filtered = client.get("/v1/resources", params={"backend": backend, "state": state}).json()
    assert mine[0]["id"] in {r["id"] for r in filtered}
    assert all(r["backend"] == backend and r["state"] == state for r in filtered)
    bad_state = client.get("/v1/resources", params={"state": "sleeping"})
    assert bad_state.status_code == 422 and bad_state.json()["message"].startswith("query.state: ")

    # The request shows the resources it got.
    shown = client.get(f"/v1/requests/{created['id']}").json()
    assert {r["id"] for r in shown["resources"]} == {r["id"] for r in mine}
    assert shown["live_resources"] == len(mine)

    # Events: newest first, filtered by kind and subject.
    events = client.get("/v1/events", params={"subject": mine[0]["id"]}).json()
    assert events and all(e["subject"] == mine[0]["id"] for e in events)
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
    assert events[-1]["payload"]["to"] == "requested"
    assert len(client.get("/v1/events", params={"limit": 2}).json()) == 2

    # Decisions: the stored plan with one decision per group and its explanation.
    stored = client.get("/v1/decisions", params={"plan_id": report.plan_ids[0]}).json()
    assert [p["id"] for p in stored] == [report.plan_ids[0]]
    decision = next(d for d in stored[0]["decisions"] if d["group_id"] == f"request:{created['id']}")
    assert decision["offering_id"] and decision["units"] == len(mine)
    assert decision["explanation"]["chosen"]
    assert client.get("/v1/decisions").json()[0]["id"] in report.plan_ids
    missing = client.get("/v1/decisions", params={"plan_id": "p-nope"})
    assert missing.status_code == 404 and "p-nope" in missing.json()["detail"]

    # Metrics: fed by the bus (counters) and read from the database (gauges).
    text = wait_for_metric(client, 'provisioner_resource_transitions_total{backend="')
    assert f'provisioner_resource_transitions_total{{backend="{backend}",from_state="requested"' in text
    assert "provisioner_plans_total{" in text
    assert "provisioner_last_plan_cost_usd " in text
    assert f'provisioner_resources{{backend="{backend}",state="{state}"}}' in text
    assert f'provisioner_spend_rate_usd_per_hour{{backend="{backend}"}}' in text
    assert 'provisioner_burst_requests{status="admitted"}' in text
    assert "provisioner_database_up 1.0" in text
    assert 'provisioner_events_total{kind="plan.created"}' in text


def test_metrics_are_in_the_prometheus_text_format(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE provisioner_cycle_duration_seconds histogram" in response.text


def test_healthz_reports_a_reachable_database(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "reachable"}


def test_openapi_docs_are_served(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/requests",
        "/v1/offerings",
        "/v1/plan",
        "/v1/resources",
        "/v1/events",
        "/v1/decisions",
    } <= set(paths)


# --- auth and failure ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    app = create_app(
        broker_factory(tmp_path_factory.mktemp("guarded")), settings=ApiSettings(token="s3cret-t0ken")
    )
    yield from serve(app)


@pytest.mark.parametrize(
    "path", ["/v1/requests", "/v1/offerings?limit=1", "/v1/resources", "/v1/events", "/v1/plan"]
)
def test_token_is_required_on_v1_when_set(guarded: LiveServer, path: str) -> None:
    with guarded.client() as anonymous:
        response = anonymous.get(path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    with guarded.client("wrong-token") as wrong:
        assert wrong.get(path).status_code == 401
    with guarded.client("s3cret-t0ken") as operator:
        assert operator.get(path).status_code == 200


def test_health_and_metrics_need_no_token(guarded: LiveServer) -> None:
    with guarded.client() as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_API_TOKEN", "from-env")
    assert ApiSettings().required_token() == "from-env"
    monkeypatch.setenv("PROVISIONER_API_TOKEN", "")
    assert ApiSettings().required_token() is None
    assert "from-env" not in repr(ApiSettings(token="from-env"))


def test_unreachable_database_makes_healthz_503_and_the_gauge_zero(tmp_path: Path) -> None:
    def unreachable(broker: Broker) -> Broker:
        # A SQLite file in a directory that does not exist cannot be opened.
        return dataclasses.replace(broker, db=make_engine(f"sqlite:///{tmp_path / 'gone' / 'x.db'}"))

    app = create_app(broker_factory(tmp_path, alter=unreachable), settings=ApiSettings(token=None))
    for server in serve(app):
        with server.client() as c:
            response = c.get("/healthz")
            assert response.status_code == 503
            assert response.json() == {"status": "unavailable", "database": "unreachable"}
            assert "provisioner_database_up 0.0" in c.get("/metrics").text


def test_admission_estimate_avoids_a_backend_whose_circuit_breaker_is_open(tmp_path: Path) -> None:
    app = create_app(broker_factory(tmp_path), settings=ApiSettings(token=None))
    for server in serve(app):
        with server.client() as c:
            before = create(c, CPU_REQUEST)
            chosen = str(before["offerings"][0]).split(":")[0]  # type: ignore[index]
            server.context.broker.engine.circuit.record_failure(
                backend_key(chosen), f"{chosen}: login node down", cooloff=timedelta(hours=1)
            )
            after = create(c, CPU_REQUEST)
            assert after["status"] == "admitted"
            assert after["offerings"] and not any(
                o.startswith(f"{chosen}:")
                for o in after["offerings"]  # type: ignore[attr-defined]
            )

"""The API against its own OpenAPI spec (schemathesis, a bounded number of examples per operation):
no 5xx, every response (status, headers, body) as documented, Allow headers that list every method."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from provisioner.api import create_app
from provisioner.api.context import ApiSettings
from tests.api.conftest import broker_factory, serve

TOKEN = "schemathesis-operator"
# Rules the spec cannot state (exactly one of cores/gpus; a TOML document that parses; a filter value
# the catalog knows): a schema-valid request may get a 422 naming the rule.
CROSS_FIELD_RULES = {"POST /v1/requests", "POST /v1/heartbeats", "GET /v1/offerings", "PUT /v1/policy"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(
        broker_factory(tmp_path_factory.mktemp("schemathesis")),
        settings=ApiSettings(token=TOKEN, budget_check_seconds=0),
    )
    for server in serve(app):
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_answers_as_its_openapi_spec_says(case: schemathesis.Case) -> None:
    excluded = []
    if f"{case.method.upper()} {case.path}" in CROSS_FIELD_RULES:
        excluded.append(positive_data_acceptance)
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded)


def test_an_unknown_query_parameter_is_a_422_naming_it(api_schema: schemathesis.BaseSchema) -> None:
    import httpx

    base = api_schema.location.rsplit("/openapi.json", 1)[0]  # type: ignore[union-attr]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    typo = httpx.get(f"{base}/v1/resources", params={"experment": "atlas", "limit": 5}, headers=auth)
    assert typo.status_code == 422, typo.text
    assert "unknown query parameter 'experment'" in typo.json()["message"]
    assert "experiment" in typo.json()["message"], "it lists the parameters the operation takes"
    assert httpx.get(f"{base}/v1/policy", params={"x": "1"}, headers=auth).status_code == 422
    assert httpx.get(f"{base}/v1/resources", params={"experiment": "atlas", "offset": 0}, headers=auth).status_code == 200


def test_a_405_lists_every_method_the_path_serves(api_schema: schemathesis.BaseSchema) -> None:
    import httpx

    base = api_schema.location.rsplit("/openapi.json", 1)[0]  # type: ignore[union-attr]
    response = httpx.request("PATCH", f"{base}/v1/requests", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"


def test_a_body_over_the_limit_is_refused_before_any_route_reads_it(api_schema: schemathesis.BaseSchema) -> None:
    import httpx

    base = api_schema.location.rsplit("/openapi.json", 1)[0]  # type: ignore[union-attr]
    huge = b'{"experiment": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = httpx.post(
        f"{base}/v1/requests", content=huge, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    )
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(40):
            yield b" " * 65536

    streamed = httpx.post(
        f"{base}/v1/requests", content=chunks(), headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413

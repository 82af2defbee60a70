"""WLCG tokens over real HTTP: a test issuer's JWKS on loopback, scopes, experiment confinement, each refusal named."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.api import create_app
from provisioner.api.auth_config import AuthConfig, StaticToken
from provisioner.api.context import ApiSettings
from provisioner.api.exposure import listen_refusal
from provisioner.broker import Broker
from provisioner.clock import SimulatedClock
from tests.api.conftest import LiveServer, broker_factory, serve
from tests.api.issuer import AUDIENCE, NOW, TestIssuer

ATLAS_ALL = "burst:request burst:read burst:cancel resource:read resource:drain"
OPERATOR = "burst:request burst:read burst:cancel policy:read policy:write resource:read resource:drain report:read"


@pytest.fixture(scope="module")
def issuer() -> Iterator[TestIssuer]:
    it = TestIssuer()
    yield it
    it.stop()


def at_now(broker: Broker) -> Broker:
    return dataclasses.replace(broker, clock=SimulatedClock(NOW))


@pytest.fixture(scope="module")
def server(issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    app = create_app(
        broker_factory(tmp_path_factory.mktemp("auth"), alter=at_now),
        settings=ApiSettings(token=None, auth=issuer.config()),
    )
    yield from serve(app)


def call(server: LiveServer, token: str | None, method: str, path: str, **kw: object) -> httpx.Response:
    with server.client(token) as c:
        return c.request(method, path, **kw)  # type: ignore[arg-type]


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])


def test_a_valid_token_with_the_scope_is_let_in(server: LiveServer, issuer: TestIssuer) -> None:
    response = call(server, issuer.mint(scopes="burst:read"), "GET", "/v1/requests")
    assert response.status_code == 200, response.text


def test_no_token_is_401_saying_how_to_send_one(server: LiveServer) -> None:
    response = call(server, None, "GET", "/v1/requests")
    assert response.status_code == 401
    assert "Authorization: Bearer" in detail(response)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_expired_token_is_refused(server: LiveServer, issuer: TestIssuer) -> None:
    token = issuer.mint(expires=NOW - timedelta(minutes=5))
    response = call(server, token, "GET", "/v1/requests")
    assert response.status_code == 401 and "expired" in detail(response)


def test_a_token_not_yet_valid_is_refused(server: LiveServer, issuer: TestIssuer) -> None:
    token = issuer.mint(not_before=NOW + timedelta(minutes=10))
    response = call(server, token, "GET", "/v1/requests")
    assert response.status_code == 401 and "not valid before" in detail(response)


def test_a_token_for_another_audience_is_refused(server: LiveServer, issuer: TestIssuer) -> None:
    response = call(server, issuer.mint(audience="https://other.service"), "GET", "/v1/requests")
    assert response.status_code == 401 and "wrong audience" in detail(response)
    assert AUDIENCE in detail(response)


def test_a_token_from_an_untrusted_issuer_is_refused(server: LiveServer, issuer: TestIssuer) -> None:
    response = call(server, issuer.mint(issuer="https://evil.example"), "GET", "/v1/requests")
    assert response.status_code == 401 and "not trusted" in detail(response)


def test_a_tampered_token_is_refused(server: LiveServer, issuer: TestIssuer) -> None:
    header, payload, signature = issuer.mint(scopes="burst:read", groups=["/lsst"]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["wlcg.groups"] = ["/facility/operators"]  # promote ourselves, keep the old signature
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = call(server, f"{header}.{forged}.{signature}", "GET", "/v1/requests")
    assert response.status_code == 401 and "signature" in detail(response)


def test_an_unsigned_alg_none_token_is_refused(server: LiveServer, issuer: TestIssuer) -> None:
    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"iss": issuer.url, "sub": "mallory", "aud": AUDIENCE, "exp": int(NOW.timestamp()) + 3600,
              "scope": OPERATOR, "wlcg.groups": ["/facility/operators"]}
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    response = call(server, token, "GET", "/v1/requests")
    assert response.status_code == 401 and "'none' is not accepted" in detail(response)


def test_a_token_without_the_scope_is_403_naming_it(server: LiveServer, issuer: TestIssuer) -> None:
    response = call(server, issuer.mint(scopes="burst:read"), "POST", "/v1/requests",
                    json={"experiment": "atlas", "cores": 8, "duration_hours": 1})
    assert response.status_code == 403
    assert "burst:request" in detail(response)
    assert 'scope="burst:request"' in response.headers["www-authenticate"]


def test_an_experiment_sees_and_changes_only_its_own_requests(server: LiveServer, issuer: TestIssuer) -> None:
    atlas = issuer.mint(scopes=ATLAS_ALL, groups=["/atlas"])
    lsst = issuer.mint(scopes=ATLAS_ALL, groups=["/lsst"], subject="bob")
    created = call(server, atlas, "POST", "/v1/requests", json={"experiment": "atlas", "cores": 8, "duration_hours": 1})
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]

    # another experiment's group: cannot cancel, read, or ask on its behalf; each refusal names the group
    cancel = call(server, lsst, "DELETE", f"/v1/requests/{request_id}")
    assert cancel.status_code == 403 and "'/atlas'" in detail(cancel) and "/lsst" in detail(cancel)
    assert call(server, lsst, "GET", f"/v1/requests/{request_id}").status_code == 403
    on_behalf = call(server, lsst, "POST", "/v1/requests", json={"experiment": "atlas", "cores": 8, "duration_hours": 1})
    assert on_behalf.status_code == 403
    assert request_id not in {r["id"] for r in call(server, lsst, "GET", "/v1/requests").json()}
    assert call(server, lsst, "GET", "/v1/requests?experiment=atlas").status_code == 403
    assert call(server, lsst, "GET", "/v1/resources?experiment=atlas").status_code == 403

    # its own experiment and the operators can
    assert call(server, atlas, "GET", f"/v1/requests/{request_id}").status_code == 200
    operator = issuer.mint(scopes=OPERATOR, groups=["/facility/operators"], subject="op")
    assert request_id in {r["id"] for r in call(server, operator, "GET", "/v1/requests").json()}
    assert call(server, atlas, "DELETE", f"/v1/requests/{request_id}").json()["status"] == "cancelled"


def test_rotated_keys_are_fetched_once_and_old_ones_dropped(server: LiveServer, issuer: TestIssuer) -> None:
    old = issuer.mint(scopes="burst:read")
    assert call(server, old, "GET", "/v1/requests").status_code == 200
    reads = issuer.jwks_reads
    for _ in range(3):  # cached: no read per call
        assert call(server, old, "GET", "/v1/requests").status_code == 200
    assert issuer.jwks_reads == reads
    issuer.rotate("k2")
    server.context.broker.clock.advance(30)  # type: ignore[attr-defined]
    assert call(server, issuer.mint(scopes="burst:read", kid="k2"), "GET", "/v1/requests").status_code == 200
    assert issuer.jwks_reads == reads + 1  # an unknown key id made it re-read the JWKS once
    issuer.keys.pop("k1")
    gone = call(server, old, "GET", "/v1/requests")
    assert gone.status_code == 401 and "no signing key 'k1'" in detail(gone)


def test_health_and_metrics_stay_open(server: LiveServer) -> None:
    assert call(server, None, "GET", "/healthz").status_code == 200
    assert call(server, None, "GET", "/metrics").status_code == 200


def test_static_tokens_carry_their_own_scopes_and_groups(tmp_path: Path, issuer: TestIssuer) -> None:
    config = issuer.config().model_copy(
        update={"static_tokens": [StaticToken(token="dev-lsst", scopes=["burst:read"], groups=["/lsst"])]}  # type: ignore[list-item]
    )
    app = create_app(broker_factory(tmp_path, alter=at_now), settings=ApiSettings(token=None, auth=config))
    for s in serve(app):
        assert call(s, "dev-lsst", "GET", "/v1/requests").status_code == 200
        assert call(s, "dev-lsst", "GET", "/v1/requests?experiment=atlas").status_code == 403
        assert call(s, "dev-lsst", "DELETE", "/v1/requests/req-x").status_code == 403
        assert call(s, "dev-wrong", "GET", "/v1/requests").status_code == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "broker.example.org"])
def test_serving_beyond_loopback_needs_token_issuers(host: str, issuer: TestIssuer) -> None:
    assert "no authentication is configured" in str(listen_refusal(host, ApiSettings(token=None)))
    assert "static tokens are for development" in str(listen_refusal(host, ApiSettings(token="t")))
    assert listen_refusal(host, ApiSettings(token=None, auth=issuer.config())) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_may_be_served_without_authentication(host: str) -> None:
    assert listen_refusal(host, ApiSettings(token=None, auth=AuthConfig())) is None


def test_the_example_auth_file_is_valid() -> None:
    from provisioner.api.auth_config import load_auth_config

    config = load_auth_config(Path(__file__).resolve().parents[2] / "docs" / "auth.example.toml")
    assert config.configured() and config.groups["/atlas"].experiment == "atlas"


def test_a_typo_in_the_auth_file_stops_the_start(tmp_path: Path) -> None:
    from provisioner.api.auth_config import AuthConfigError, load_auth_config

    bad = tmp_path / "auth.toml"
    bad.write_text('[[issuers]]\nissuer = "https://iam"\naudiense = "x"\n')
    with pytest.raises(AuthConfigError, match="audiense"):
        load_auth_config(bad)


def test_an_operator_drains_and_releases_a_unit_an_experiment_cannot_touch_anothers(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    def static(token: str, scopes: str, group: str) -> StaticToken:
        return StaticToken(token=token, scopes=scopes.split(), groups=[group])  # type: ignore[arg-type]

    config = issuer.config().model_copy(
        update={
            "static_tokens": [
                static("atlas", ATLAS_ALL, "/atlas"),
                static("lsst", "resource:drain", "/lsst"),
                static("watcher", "resource:read", "/facility/operators"),
                static("operator", OPERATOR, "/facility/operators"),
            ]
        }
    )
    app = create_app(broker_factory(tmp_path), settings=ApiSettings(token=None, auth=config))
    for server in serve(app):
        body = {"experiment": "atlas", "cores": 512, "duration_hours": 4}
        created = call(server, "atlas", "POST", "/v1/requests", json=body)
        server.call(server.context.broker.engine.run_cycle())
        units = call(server, "atlas", "GET", f"/v1/requests/{created.json()['id']}").json()["resources"]
        assert len(units) >= 2, units
        first, second = units[0]["id"], units[-1]["id"]
        server.call(server.context.broker.engine.run_cycle())  # the units boot

        assert call(server, "lsst", "POST", f"/v1/resources/{first}/drain").status_code == 403
        no_scope = call(server, "watcher", "POST", f"/v1/resources/{first}/drain")
        assert no_scope.status_code == 403 and "resource:drain" in detail(no_scope)

        drained = call(server, "operator", "POST", f"/v1/resources/{first}/drain")
        assert drained.status_code == 200, drained.text
        assert drained.json()["state"] == "draining"
        released = call(server, "operator", "POST", f"/v1/resources/{second}/release")
        assert released.json()["state"] == "released"
        again = call(server, "operator", "POST", f"/v1/resources/{second}/release")
        assert again.status_code == 409 and "released" in detail(again)
        assert call(server, "operator", "POST", "/v1/resources/nope/drain").status_code == 404


def test_a_token_signed_with_a_shared_secret_made_of_the_public_key_is_refused(
    server: LiveServer, issuer: TestIssuer
) -> None:
    from cryptography.hazmat.primitives import serialization

    public_pem = issuer.keys[issuer.published[0]].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"iss": issuer.url, "sub": "mallory", "aud": AUDIENCE, "exp": int(NOW.timestamp()) + 3600,
              "scope": OPERATOR, "wlcg.groups": ["/facility/operators"]}
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    # PyJWT refuses to make this token, so it is made by hand: HMAC keyed with the issuer's public key.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.published[0]}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{b64(signature)}"
    response = call(server, forged, "GET", "/v1/requests")
    assert response.status_code == 401 and "'HS256' is not accepted" in detail(response)


def test_an_issuer_whose_keys_cannot_be_read_lets_nobody_in(tmp_path: Path, issuer: TestIssuer) -> None:
    from provisioner.api.auth_config import IssuerConfig
    from tests.services import free_port

    config = AuthConfig(issuers=[IssuerConfig(issuer=issuer.url, audience=AUDIENCE, jwks_uri=f"http://127.0.0.1:{free_port()}/jwks")])
    app = create_app(broker_factory(tmp_path, alter=at_now), settings=ApiSettings(token=None, auth=config, budget_check_seconds=0))
    for s in serve(app):
        token = issuer.mint(scopes=OPERATOR, kid=issuer.published[0])
        response = call(s, token, "GET", "/v1/requests")
        assert response.status_code == 401 and "cannot read the signing keys" in detail(response)


@given(
    groups=st.lists(st.sampled_from(["/atlas", "/lsst", "/ops", "/unknown", "/atlas/production"]), max_size=4),
    experiment=st.sampled_from(["atlas", "lsst", "cms"]),
)
def test_a_token_sees_an_experiment_exactly_when_one_of_its_groups_grants_it(groups: list[str], experiment: str) -> None:
    from provisioner.api.auth import Authenticator
    from provisioner.api.auth_config import GroupGrant

    mapping = {
        "/atlas": GroupGrant(experiment="atlas"),
        "/lsst": GroupGrant(experiment="lsst"),
        "/ops": GroupGrant(all_experiments=True),
    }
    auth = Authenticator(AuthConfig(groups=mapping), None)
    granted = auth.experiments_of(groups)
    expected = "/ops" in groups or any(mapping[g].experiment == experiment for g in groups if g in mapping)
    assert (granted is None or experiment in granted) == expected

"""Two experiments' tokens over the seeded broker: neither sees the other's requests, resources, costs,
events or plan rows, in the API or in the console's pages."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from provisioner.model import BurstRequestRow, ResourceRow
from tests.api.conftest import LiveServer
from tests.console.conftest import TOKENS
from tests.console.test_console_pages import browser

TENANTS = {"atlas": "atlas-reader", "lsst": "lsst-reader"}


def api(server: LiveServer, who: str, path: str) -> Any:
    with server.client(TOKENS[who][0]) as c:
        response = c.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def owned(server: LiveServer) -> dict[str, dict[str, set[str]]]:
    """Per experiment: the ids of its requests and resources, read from the database."""
    out: dict[str, dict[str, set[str]]] = {e: {"requests": set(), "resources": set()} for e in TENANTS}
    with Session(server.context.broker.db) as session:
        for r in session.exec(select(BurstRequestRow)):
            out[r.experiment]["requests"].add(r.id)
        for res in session.exec(select(ResourceRow)):
            if res.experiment in out:
                out[res.experiment]["resources"].add(res.id)
    return out


@pytest.mark.parametrize("experiment", sorted(TENANTS))
def test_an_experiment_reads_only_its_own_requests_resources_costs_and_events(
    console: LiveServer, experiment: str
) -> None:
    who = TENANTS[experiment]
    ids = owned(console)
    other = next(e for e in TENANTS if e != experiment)
    assert ids[other]["resources"] and ids[other]["requests"], "the seed gives both experiments units"

    requests = api(console, who, "/v1/requests?limit=1000")
    assert requests and {r["experiment"] for r in requests} == {experiment}
    assert {r["id"] for r in requests} == ids[experiment]["requests"]  # each with its cost so far

    resources = api(console, who, "/v1/resources?limit=1000")
    assert resources and {r["experiment"] for r in resources} == {experiment}
    assert not {r["id"] for r in resources} & ids[other]["resources"]

    events = api(console, who, "/v1/events?limit=1000")
    theirs = ids[other]["requests"] | ids[other]["resources"] | {other}
    assert {"resource.state", "request.admitted"} <= {e["kind"] for e in events}
    mine = ids[experiment]["requests"] | ids[experiment]["resources"] | {experiment}
    assert {e["subject"] for e in events} <= mine and not {e["subject"] for e in events} & theirs
    assert all(e["payload"].get("experiment") in (None, experiment) for e in events)
    assert not any(e["kind"].startswith(("plan.", "circuit.", "cycle.")) for e in events)


def test_operators_still_read_every_event(console: LiveServer) -> None:
    kinds = {e["kind"] for e in api(console, "operator", "/v1/events?limit=1000")}
    assert {"resource.state", "request.admitted", "cycle.finished"} <= kinds


def test_the_dry_run_plan_shows_an_experiment_its_own_groups_and_drains(console: LiveServer) -> None:
    ids = owned(console)
    lsst_request = sorted(ids["lsst"]["requests"])[0]
    with console.client(TOKENS["operator"][0]) as op:  # its demand goes: the plan drains its units
        assert op.delete(f"/v1/requests/{lsst_request}").status_code == 200
    full = api(console, "operator", "/v1/plan")
    draining = {d["resource_id"] for d in full["drains"]}
    assert draining & ids["lsst"]["resources"], "the cancelled request's units are drained"

    for experiment, who in TENANTS.items():
        plan = api(console, who, "/v1/plan")
        other = next(e for e in TENANTS if e != experiment)
        assert plan["explanations"] and {e["experiment"] for e in plan["explanations"]} == {experiment}
        groups = {e["group_id"] for e in plan["explanations"]}
        assert {i["group_id"] for i in plan["items"]} <= groups
        drains = {d["resource_id"] for d in plan["drains"]}
        assert drains <= ids[experiment]["resources"] and not drains & ids[other]["resources"]
        assert plan["demand_groups"] == len(groups) < full["demand_groups"]
        assert Decimal(plan["total_cost_usd"]) == sum(Decimal(i["cost_usd"]) for i in plan["items"])
    lsst_drains = {d["resource_id"] for d in api(console, "lsst-reader", "/v1/plan")["drains"]}
    assert lsst_drains == draining & ids["lsst"]["resources"]


def section(html: str, element_id: str) -> str:
    return html.split(f'id="{element_id}"')[1].split("</table>")[0]


@pytest.mark.parametrize("experiment", sorted(TENANTS))
def test_the_console_pages_show_an_experiment_only_its_own_rows(console: LiveServer, experiment: str) -> None:
    ids = owned(console)
    other = next(e for e in TENANTS if e != experiment)
    with browser(console, TENANTS[experiment]) as client:
        pages = {p: client.get(f"/console/{p}") for p in ("experiment", "operator", "finance")}
    assert all(r.status_code == 200 for r in pages.values()), {p: r.status_code for p, r in pages.items()}
    html = {p: r.text for p, r in pages.items()}
    theirs = ids[other]["requests"] | ids[other]["resources"]
    for page, text in html.items():
        assert not [i for i in theirs if i in text], f"{page} shows {other}'s ids"
    assert any(i in html["experiment"] for i in ids[experiment]["requests"])
    assert any(i in html["operator"] for i in ids[experiment]["resources"])
    assert other not in section(html["experiment"], "requests")
    assert other not in section(html["operator"], "units") and other not in section(html["operator"], "decisions")
    assert f'data-experiment="{experiment}"' in html["finance"]
    assert f'data-experiment="{other}"' not in html["finance"]


def test_an_experiment_token_cannot_read_another_experiments_rows_by_asking(console: LiveServer) -> None:
    ids = owned(console)
    with httpx.Client(base_url=console.url, headers={"Authorization": f"Bearer {TOKENS['atlas-reader'][0]}"}) as c:
        assert c.get("/v1/requests", params={"experiment": "lsst"}).status_code == 403
        assert c.get("/v1/resources", params={"experiment": "lsst"}).status_code == 403
        assert c.get(f"/v1/requests/{sorted(ids['lsst']['requests'])[0]}").status_code == 403
        for subject in sorted(ids["lsst"]["resources"])[:3]:
            assert c.get("/v1/events", params={"subject": subject}).json() == []

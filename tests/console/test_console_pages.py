"""The console's pages over HTTP: each shows the seeded data, to the right people only."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx

from provisioner.console import views
from tests.api.conftest import LiveServer
from tests.console.conftest import TOKENS


def form_token(html: str) -> str:
    """The CSRF token a console page puts in its forms."""
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found is not None and found.group(1), "the page's forms carry a CSRF token"
    return found.group(1)


@contextlib.contextmanager
def browser(server: LiveServer, who: str | None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as client:
        if who is not None:
            login = form_token(client.get("/console/login").text)
            response = client.post("/console/login", data={"token": TOKENS[who][0], "csrf": login})
            assert response.status_code == 303, response.text
        yield client


def csrf_of(client: httpx.Client, page: str = "experiment") -> str:
    return form_token(client.get(f"/console/{page}").text)


def test_without_a_token_every_page_sends_the_browser_to_the_login_form(console: LiveServer) -> None:
    with browser(console, None) as anonymous:
        for page in ("/console", "/console/operator", "/console/finance", "/console/experiment"):
            response = anonymous.get(page)
            assert response.status_code == 303 and response.headers["location"].startswith("/console/login")
        wrong = anonymous.post("/console/login", data={"token": "nope", "csrf": csrf_of(anonymous, "login")})
        assert wrong.status_code == 401 and "not one this service knows" in wrong.text


def test_the_operator_page_shows_fleet_decisions_breakers_and_allocations(console: LiveServer) -> None:
    with browser(console, "operator") as op:
        page = op.get("/console/operator")
        assert page.status_code == 200
        html = page.text
        assert 'id="fleet-chart"' in html and "<svg" in html
        assert "running" in html and "atlas" in html and "lsst" in html
        assert "gce: ZONE_RESOURCE_POOL_EXHAUSTED" in html  # the tripped breaker
        assert "perlmutter-cpu" in html and "burn line" in html
        assert "v2" in html, "decisions name the policy version they were made under"
        assert "Budget alert" in html and "atlas: month-end forecast" in html


def test_an_experiment_sees_only_its_own_requests_and_units(console: LiveServer) -> None:
    with browser(console, "atlas") as atlas:
        page = atlas.get("/console/experiment").text
        assert "atlas" in page and "lsst" not in page.split('id="requests"')[1]
        ops = atlas.get("/console/operator").text
        assert "lsst" not in ops.split('id="units"')[1].split("</table>")[0]
        assert atlas.get("/console/finance").status_code == 403


def test_finance_sees_spend_budget_forecast_and_the_alert(console: LiveServer) -> None:
    with browser(console, "finance") as finance:
        html = finance.get("/console/finance").text
        assert 'id="budget-chart"' in html
        row = html.split('data-experiment="atlas"')[1].split("</tr>")[0]
        assert "$400.00" in row and "forecast over 100% of budget" in row
        assert finance.get("/console/operator").status_code == 403


def test_a_request_made_in_the_console_wakes_the_engine_and_others_cannot_ask_for_atlas(console: LiveServer) -> None:
    from urllib.parse import unquote

    from provisioner.demand_signal import DEMAND_TOPIC

    bus = console.context.broker.store.bus
    assert bus is not None
    subscription = console.call(bus.subscribe(DEMAND_TOPIC))
    with browser(console, "atlas") as atlas:
        form = {"experiment": "atlas", "cores": "64", "gpus": "0", "duration_hours": "2", "csrf": csrf_of(atlas)}
        made = atlas.post("/console/requests", data=form)
        assert made.status_code == 303 and "admitted" in unquote(made.headers["location"])
        refused = atlas.post("/console/requests", data={**form, "experiment": "lsst"})
        assert refused.status_code == 403 and "needs group &#39;/lsst&#39;" in refused.text
    message = console.call(subscription.get(timeout=10))
    assert message.payload["experiment"] == "atlas"


def test_the_policy_page_shows_every_version_and_what_changed(console: LiveServer) -> None:
    with browser(console, "operator") as op:
        html = op.get("/console/policy").text
        assert "version 2" in html and "ATLAS budget cut for March" in html
        diff = html.split('id="diff"')[1].split("</pre>")[0]
        assert '-monthly = &#34;50000&#34;' in diff and '+monthly = &#34;400&#34;' in diff
        assert op.get("/console/policy?compare=99999999999").status_code == 200
    with browser(console, "finance") as finance:
        assert finance.get("/console/policy").status_code == 403


def test_a_form_posted_without_the_sessions_csrf_token_is_refused(console: LiveServer) -> None:
    """A cross-site page can make the browser send the cookie (were SameSite to fail) but not the token."""
    ids = [r.id for r in views_requests(console)]
    unit = next(iter(live_unit_ids(console)))
    form = {"experiment": "atlas", "cores": "8", "gpus": "0", "duration_hours": "1"}
    with browser(console, "operator") as op, browser(console, "atlas") as atlas:
        others = csrf_of(atlas)  # a valid token, of another session
        posts = [
            ("/console/requests", form),
            (f"/console/requests/{ids[0]}/cancel", {}),
            (f"/console/resources/{unit}/drain", {}),
            (f"/console/resources/{unit}/release", {}),
            ("/console/logout", {}),
        ]
        for path, data in posts:
            for bad in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": others}):
                refused = op.post(path, data={**data, **bad})
                assert refused.status_code == 403 and "CSRF token" in refused.text, (path, bad, refused.text)
        assert op.get("/console/operator").status_code == 200, "still logged in: the logout was refused too"
    assert [r.id for r in views_requests(console)] == ids, "nothing was created or cancelled"
    assert unit in live_unit_ids(console), "nothing was drained or released"
    with httpx.Client(base_url=console.url, timeout=60) as fresh:  # login: the form's value must match its cookie
        fresh.get("/console/login")
        refused = fresh.post("/console/login", data={"token": TOKENS["operator"][0], "csrf": "forged"})
        assert refused.status_code == 403 and "CSRF token" in refused.text
        assert fresh.post("/console/login", data={"token": TOKENS["operator"][0]}).status_code == 403


def views_requests(server: LiveServer) -> list[views.RequestView]:
    broker = server.context.broker
    return views.requests(broker.db, None, broker.clock.now())


def live_unit_ids(server: LiveServer) -> set[str]:
    return {u.id for u in views.live_units(server.context.broker.db, None) if u.state == "running"}


def test_the_finance_page_shows_the_months_invoice_reconciliation(reconciled: LiveServer) -> None:
    from sqlmodel import Session

    from accounting.period import Month
    from accounting.reconcile import reconcile

    broker = reconciled.context.broker
    with Session(broker.db) as session:  # what `report reconcile` computes
        rec = reconcile(session, Month.of(broker.clock.now()))
    by_experiment = {c.key[0]: c for c in rec.by_experiment}
    assert {"atlas", "lsst"} <= set(by_experiment)
    with browser(reconciled, "finance") as finance:
        html = finance.get("/console/finance").text
    table = html.split('id="reconciliation"')[1].split("</table>")[0]
    for name, c in by_experiment.items():
        row = table.split(f'data-total="{name}"')[1].split("</tr>")[0]
        assert f"${c.estimated:,.2f}" in row and f"${c.invoiced:,.2f}" in row
        assert f"{c.difference_pct:+.2f} %" in row
    assert 'data-experiment="atlas" data-backend="gce"' in table and 'data-total="all"' in table
    with browser(reconciled, "lsst-reader") as lsst:
        mine = lsst.get("/console/finance").text.split('id="reconciliation"')[1].split("</table>")[0]
    assert 'data-total="lsst"' in mine and "atlas" not in mine and 'data-total="all"' not in mine

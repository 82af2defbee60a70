"""The console in a real browser (Debian's headless Chromium driven by Playwright): pages load with the
seeded data, and the main actions work — log in, drain a unit, ask for capacity, cancel a request.

Screenshots go to $CONSOLE_SCREENSHOTS (default: the test's temporary directory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import LiveServer
from tests.console.conftest import TOKENS
from tests.services import service_missing

CHROMIUM = Path("/usr/bin/chromium")

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not CHROMIUM.exists():
        service_missing("Chromium", "bash scripts/services.sh (installs Debian's chromium)")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def login(chromium: object, server: LiveServer, who: str) -> object:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(f"{server.url}/console")
    assert "/console/login" in page.url
    page.fill("#token", TOKENS[who][0])
    page.click("#login")
    page.wait_for_load_state()
    return page


def test_an_operator_sees_the_fleet_and_drains_a_unit(chromium: object, console: LiveServer, shots: Path) -> None:
    page = login(chromium, console, "operator")
    assert page.url.endswith("/console/operator")  # type: ignore[attr-defined]
    assert page.locator("#fleet-chart svg").count() == 1  # type: ignore[attr-defined]
    assert page.locator("#decisions tr").count() > 1  # type: ignore[attr-defined]
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in page.inner_text("#breakers")  # type: ignore[attr-defined]
    assert page.locator(".alert").first.is_visible()  # type: ignore[attr-defined]
    page.screenshot(path=str(shots / "operator.png"), full_page=True)  # type: ignore[attr-defined]

    row = page.locator("#units tr[data-unit]").filter(has=page.locator("button.drain")).first  # type: ignore[attr-defined]
    unit = row.get_attribute("data-unit")
    row.locator("button.drain").click()
    page.wait_for_load_state()  # type: ignore[attr-defined]
    assert f"resource {unit}: drain asked" in page.inner_text(".ok")  # type: ignore[attr-defined]
    assert "draining" in page.inner_text(f'#units tr[data-unit="{unit}"]')  # type: ignore[attr-defined]

    page.click("text=Policy")  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]
    assert "ATLAS budget cut for March" in page.inner_text("#versions")  # type: ignore[attr-defined]
    assert '+monthly = "400"' in page.inner_text("#diff")  # type: ignore[attr-defined]
    page.screenshot(path=str(shots / "policy.png"), full_page=False)  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]


def test_an_experiment_asks_for_capacity_and_cancels_it(chromium: object, console: LiveServer, shots: Path) -> None:
    page = login(chromium, console, "atlas")
    assert page.url.endswith("/console/operator")  # type: ignore[attr-defined]
    page.goto(f"{console.url}/console/experiment")  # type: ignore[attr-defined]
    page.fill("input[name=cores]", "128")  # type: ignore[attr-defined]
    page.fill("input[name=duration_hours]", "6")  # type: ignore[attr-defined]
    page.click("#new-request button")  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]
    message = page.inner_text(".ok")  # type: ignore[attr-defined]
    assert "admitted" in message, message
    request_id = message.split()[1]
    row = page.locator(f'#requests tr[data-request="{request_id}"]')  # type: ignore[attr-defined]
    assert "128 cores" in row.inner_text()
    page.screenshot(path=str(shots / "experiment.png"), full_page=True)  # type: ignore[attr-defined]
    # the same post without the form's CSRF token (as a cross-site page would send it) is refused
    forged = page.evaluate(  # type: ignore[attr-defined]
        "async (id) => (await fetch(`/console/requests/${id}/cancel`, {method: 'POST'})).status", request_id
    )
    assert forged == 403
    assert page.locator(f'#requests tr[data-request="{request_id}"] input[name=csrf]').count() == 1  # type: ignore[attr-defined]
    row.locator("button.cancel").click()
    page.wait_for_load_state()  # type: ignore[attr-defined]
    assert "cancelled" in page.inner_text(f'#requests tr[data-request="{request_id}"]')  # type: ignore[attr-defined]
    assert "lsst" not in page.inner_text("#requests")  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]


def test_finance_sees_spend_against_budget_the_forecast_alert_and_the_invoice_reconciliation(
    chromium: object, reconciled: LiveServer, shots: Path
) -> None:
    console = reconciled
    page = login(chromium, console, "finance")
    assert page.url.endswith("/console/finance")  # type: ignore[attr-defined]
    assert page.locator("#budget-chart svg").count() == 1  # type: ignore[attr-defined]
    atlas = page.inner_text('#budgets tr[data-experiment="atlas"]')  # type: ignore[attr-defined]
    assert "$400.00" in atlas and "forecast over 100% of budget" in atlas
    assert "atlas: month-end forecast" in page.inner_text(".alert")  # type: ignore[attr-defined]
    reconciliation = page.locator("#reconciliation")  # type: ignore[attr-defined]
    assert reconciliation.is_visible()
    lsst = page.inner_text('#reconciliation tr[data-total="lsst"]')  # type: ignore[attr-defined]
    assert lsst.count("$") == 3 and "%" in lsst, lsst  # estimated, invoiced, difference and the % difference
    page.screenshot(path=str(shots / "finance.png"), full_page=True)  # type: ignore[attr-defined]
    page.goto(f"{console.url}/console/operator")  # type: ignore[attr-defined]
    assert "403" in page.inner_text("h1")  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]

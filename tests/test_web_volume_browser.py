"""The inbox's queue at volume and its grants in a real browser (Debian's Chromium through Playwright, as in
tests/test_web_browser.py): tick rows of the queue, give one reason, press one button, read what became of
each; approve a request and allow calls like it, editing the grant's scope and expiry first."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate
from tests.inbox import Served, Site, make_site, serve
from tests.test_web_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LIVE_MS,
    browser_or_skip,
    live,
    not_reloaded,
    sign_in_with_token,
)

try:
    from playwright.async_api import Browser, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extra brings it
    async_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def quorum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    browser_or_skip()
    site = make_site(tmp_path_factory.mktemp("volume-browser"), tokens=True)
    with serve(site) as served:
        yield site, served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    browser_or_skip()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def buy(site: Site, symbol: str, principal: str) -> str:
    arguments: dict[str, Any] = {"symbol": symbol, "quantity": 1, "price": 10.0}
    async with open_gate(load_settings(site.env)) as gate:
        return (await gate.file("buy_stock", arguments, principal)).request_id


async def test_three_selected_one_her_own_two_are_approved_and_the_third_says_why_not(
    browser: Browser, quorum: tuple[Site, Served]
) -> None:
    site, server = quorum
    first = await buy(site, "ONE", "agent")
    second = await buy(site, "TWO", "agent")
    own = await buy(site, "OWN", "alice")
    page = await sign_in_with_token(browser, server, site.tokens["alice"])
    await expect(page.get_by_text("3 requests wait; 2 on you.")).to_be_visible()
    await live(page)

    for request_id in (first, own, second):
        await page.locator(f'tr[data-request="{request_id}"]').get_by_role("checkbox").check()
    # A request arriving redraws the rows; what was ticked stays ticked.
    arrived = await buy(site, "NEW", "agent")
    await expect(page.locator(f'tr[data-request="{arrived}"]')).to_be_visible(timeout=LIVE_MS)
    assert await not_reloaded(page)
    for request_id in (first, own, second):
        await expect(page.locator(f'tr[data-request="{request_id}"]').get_by_role("checkbox")).to_be_checked()
    await expect(page.locator(f'tr[data-request="{arrived}"]').get_by_role("checkbox")).not_to_be_checked()

    await page.get_by_label("Reason").fill("end of day batch")
    await page.get_by_role("button", name="Approve selected").click()

    await expect(page.get_by_role("heading", level=1)).to_have_text("Approved 2 of 3")
    done = page.locator("#decided-done li")
    await expect(done).to_have_count(2)
    await expect(done.nth(0)).to_contain_text("Buy 1 ONE")
    await expect(done.nth(1)).to_contain_text("Buy 1 TWO")
    await expect(done.nth(0)).to_contain_text(re.compile("Executed|Running|Approved"))
    refused = page.locator("#decided-refused li")
    await expect(refused).to_have_count(1)
    await expect(refused).to_contain_text("Buy 1 OWN")
    await expect(refused).to_contain_text(
        f"alice filed request {own}; a principal may not decide its own request"
    )
    assert {order[0] for order in site.orders()} >= {first, second}
    assert own not in {order[0] for order in site.orders()}


async def test_approve_and_allow_similar_opens_a_prefilled_grant_the_approver_narrows_under_the_cap(
    browser: Browser, quorum: tuple[Site, Served]
) -> None:
    site, server = quorum
    arguments: dict[str, Any] = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}
    async with open_gate(load_settings(site.env)) as gate:
        request_id = (await gate.file("buy_stock", arguments, "agent")).request_id
    page = await sign_in_with_token(browser, server, site.tokens["alice"])
    await page.goto(f"{server.base}/requests/{request_id}")

    await page.get_by_text("Allow similar calls from agent…").click()
    await page.get_by_role("button", name="Approve and allow similar for agent…").click()

    await expect(page.get_by_role("heading", level=1)).to_have_text("Allow similar calls")
    when = page.get_by_label("When", exact=True)
    await expect(when).to_have_value("price = 150.0 AND quantity = 10 AND symbol = 'GOOGL'")
    await expect(page.get_by_text("at most 7d")).to_be_visible()
    await when.fill("symbol = 'GOOGL' AND quantity <= 10")
    await page.get_by_label("Expires after").fill("8d")
    await page.get_by_role("button", name="Make grant").click()
    await expect(page.get_by_role("alert")).to_contain_text("expires: 8d is above the cap of 7d")
    await expect(when).to_have_value("symbol = 'GOOGL' AND quantity <= 10")
    await page.get_by_label("Expires after").fill("2h")
    await page.get_by_role("button", name="Make grant").click()

    await expect(page.get_by_role("status")).to_have_text("Grant made.")
    row = page.locator("tr[data-grant]")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("buy_stock from agent when symbol = 'GOOGL' AND quantity <= 10")
    await expect(row).to_contain_text("waiting")  # the larger orders' rule also needs a risk manager
    await expect(row.get_by_role("button", name=re.compile("^Revoke grant"))).to_be_visible()
    async with open_gate(load_settings(site.env)) as gate:
        assert (await gate.get(request_id)).status.value == "executed"

"""The inbox in a real browser: Debian's Chromium, headless, driven by Playwright, against real
`hitl serve --http` processes; agents file over MCP as they would. Each test does what a person does and
checks what they would see.

Where Chromium is missing these skip, saying why — except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio

from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate
from tests.inbox import Served, Site, make_site, serve
from tests.test_auth import connect
from tests.test_cli import HITL, free_port
from tests.test_server import ok

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extra brings it
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
    "--no-first-run",
]
# The request page's picture in docs/inbox.md. A run of the suite writes its screenshot under the test's own
# tmp_path (parallel workers, and a checkout left clean); HITL_SCREENSHOT=docs/inbox.png refreshes the doc's.
SCREENSHOT = os.environ.get("HITL_SCREENSHOT")
# What "live" means here: a change shows on an open page within this long, with no reload.
LIVE_MS = 1000


def browser_or_skip() -> None:
    why = None
    if async_playwright is None:
        why = "the browser tests need playwright (pip install -e '.[dev]')"
    elif not CHROMIUM.exists():
        why = f"the browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def tokenless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    """What `make run` starts: loopback, no tokens, a sign-in link for the OS user."""
    browser_or_skip()
    site = make_site(tmp_path_factory.mktemp("inbox"), tokens=False)
    with serve(site) as served:
        yield site, served


@pytest.fixture(scope="module")
def quorum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    """Principals with tokens: alice the trader, bob the risk manager, and the agent."""
    browser_or_skip()
    site = make_site(tmp_path_factory.mktemp("quorum"), tokens=True)
    with serve(site) as served:
        yield site, served


# One browser for the module (a launch costs a second or more); each test opens contexts of its own, so no
# test sees another's cookies. Its tests therefore share the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


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


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def closing_contexts(browser: Browser) -> AsyncIterator[None]:
    """Every test's browser contexts (its cookies, its pages) go when it ends."""
    yield
    for context in browser.contexts:
        await context.close()


async def new_page(browser: Browser, width: int = 1100, height: int = 900) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(10_000)
    return await context.new_page()


async def sign_in_with_link(browser: Browser, server: Served) -> Page:
    page = await new_page(browser)
    await page.goto(server.sign_in_link())
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Waiting for a decision")).to_be_visible()
    return page


async def sign_in_with_token(browser: Browser, server: Served, token: str) -> Page:
    page = await new_page(browser)
    await page.goto(f"{server.base}/login")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Waiting for a decision")).to_be_visible()
    return page


async def live(page: Page) -> None:
    """Wait until the page's event stream is open, and mark the document: a reload would lose the mark."""
    await expect(page.get_by_text(re.compile("^Live: updates"))).to_be_visible()
    await page.evaluate("document.body.dataset.kept = 'not reloaded'")


async def not_reloaded(page: Page) -> bool:
    return bool(await page.evaluate("document.body.dataset.kept === 'not reloaded'"))


async def file_over_mcp(url: str, tool: str, arguments: dict[str, Any], token: str | None = None) -> str:
    async with connect(url, token) as agent:
        filed = ok(await agent.call_tool(tool, arguments))
    request_id: str = filed["request_id"]
    return request_id


def cli_refusal(site: Site, *args: str) -> str:
    done = subprocess.run(
        [HITL, *args], env=site.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0, done.stdout
    return done.stderr.strip().removeprefix("hitl: ")


async def test_the_printed_link_signs_in_only_once_sign_in_is_pressed(
    browser: Browser, tokenless: tuple[Site, Served]
) -> None:
    _, server = tokenless
    page = await new_page(browser)

    await page.goto(server.sign_in_link())
    await expect(page.get_by_text("This link signs you in as")).to_be_visible()
    await page.goto(f"{server.base}/")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    await expect(page.get_by_label("Token")).to_be_visible()

    await page.goto(server.sign_in_link())
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Waiting for a decision")).to_be_visible()
    await expect(page.get_by_text("Signed in as")).to_be_visible()


async def test_a_request_filed_over_mcp_appears_in_the_open_queue_and_leaves_once_decided(
    browser: Browser, tokenless: tuple[Site, Served]
) -> None:
    site, server = tokenless
    page = await sign_in_with_link(browser, server)
    await live(page)

    request_id = await file_over_mcp(
        server.mcp, "buy_stock", {"symbol": "AMZN", "quantity": 3, "price": 101.5}
    )
    row = page.locator(f'tr[data-request="{request_id}"]')
    await expect(row).to_be_visible(timeout=LIVE_MS)
    await expect(row).to_contain_text("Buy 3 AMZN at $101.50")
    await expect(row).to_contain_text("agent")
    assert await not_reloaded(page)

    async with open_gate(load_settings(site.env)) as gate:
        await gate.reject(request_id, "someone-else", "not now")
    await expect(row).to_have_count(0, timeout=LIVE_MS)
    assert await not_reloaded(page)


async def test_approving_from_the_request_page_runs_the_order(
    browser: Browser, tokenless: tuple[Site, Served], tmp_path: Path
) -> None:
    site, server = tokenless
    request_id = await file_over_mcp(
        server.mcp, "buy_stock", {"symbol": "GOOGL", "quantity": 10, "price": 150.0}
    )
    page = await sign_in_with_link(browser, server)

    await page.get_by_role("link", name="Buy 10 GOOGL at $150.00 — total $1,500.00").first.click()
    await expect(page).to_have_url(f"{server.base}/requests/{request_id}")
    await expect(page.get_by_text("$1,500.00", exact=True)).to_be_visible()
    await expect(page.get_by_text("Waiting on level 1 of 1")).to_be_visible()
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "inbox.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0

    # From the keyboard: the reason, then Tab to the first button, Approve.
    await page.get_by_label("Reason").fill("within the desk's limits")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Approve")).to_be_focused()
    await page.keyboard.press("Enter")

    await expect(page.get_by_text("Executed: the action ran once.")).to_be_visible()
    await expect(page.get_by_role("heading", name="Result")).to_be_visible()
    await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    assert [order for order in site.orders() if order[0] == request_id] == [(request_id, "GOOGL", 10)]


async def test_a_rejection_needs_a_reason_and_the_waiting_agent_hears_it(
    browser: Browser, tokenless: tuple[Site, Served]
) -> None:
    site, server = tokenless
    email = {"to": "erin@example.org", "subject": "Quarterly numbers", "body": "Attached."}
    decided: dict[str, Any] = {}

    async with connect(server.mcp, None) as agent:
        request_id = ok(await agent.call_tool("send_email", email))["request_id"]

        async def wait_for_it() -> None:
            decided.update(
                ok(
                    await agent.call_tool(
                        "wait_for_decision", {"request_id": request_id, "timeout_seconds": 40}
                    )
                )
            )

        async with anyio.create_task_group() as waiting:
            waiting.start_soon(wait_for_it)
            page = await sign_in_with_link(browser, server)
            await page.goto(f"{server.base}/requests/{request_id}")
            await page.get_by_role("button", name="Reject").click()
            refusal = page.get_by_role("alert")
            await expect(refusal).to_contain_text(
                cli_refusal(site, "reject", request_id, "--reason", " ", "--as", "bob")
            )
            await expect(refusal).to_contain_text("reason: a rejection needs a reason")
            assert decided == {}

            await page.get_by_label("Reason").fill("not to that address")
            await page.get_by_role("button", name="Reject").click()
            await expect(page.get_by_text(re.compile(r"Rejected by \S+; it will never run"))).to_be_visible()

    assert decided["status"] == "rejected"
    assert decided["decisions"][0]["reason"] == "not to that address"


async def test_edit_and_approve_shows_each_change_and_runs_the_edited_arguments(
    browser: Browser, tokenless: tuple[Site, Served]
) -> None:
    site, server = tokenless
    request_id = await file_over_mcp(
        server.mcp, "buy_stock", {"symbol": "NVDA", "quantity": 10, "price": 150.0}
    )
    page = await sign_in_with_link(browser, server)
    await page.goto(f"{server.base}/requests/{request_id}")

    await page.get_by_role("link", name="Edit and approve").click()
    await expect(page.get_by_label("symbol")).to_have_value("NVDA")
    await expect(page.get_by_label("price")).to_have_value("150.0")
    await page.get_by_label("quantity").fill("4")
    await page.get_by_role("button", name="Review changes").click()

    changed = page.get_by_role("row", name=re.compile("quantity"))
    await expect(changed).to_contain_text("10")
    await expect(changed).to_contain_text("4")
    await expect(page.get_by_role("heading", name="What the policy needs now")).to_be_visible()
    await expect(page.get_by_text("Buy 4 NVDA at $150.00 — total $600.00")).to_be_visible()
    await expect(page.get_by_text("$600.00", exact=True)).to_be_visible()
    assert all(order[0] != request_id for order in site.orders())

    await page.get_by_role("button", name="Approve").click()
    await expect(page.get_by_text("Executed: the action ran once.")).to_be_visible()
    await expect(page.get_by_role("heading", name="As filed")).to_be_visible()
    assert [order for order in site.orders() if order[0] == request_id] == [(request_id, "NVDA", 4)]


async def test_a_second_approvers_open_page_follows_the_first_approval_live(
    browser: Browser, quorum: tuple[Site, Served]
) -> None:
    site, server = quorum
    large = {"symbol": "MSFT", "quantity": 100, "price": 150.0}  # $15,000: a trader, then a risk manager
    request_id = await file_over_mcp(server.mcp, "buy_stock", large, site.tokens["agent"])
    alice = await sign_in_with_token(browser, server, site.tokens["alice"])
    bob = await sign_in_with_token(browser, server, site.tokens["bob"])
    for page in (alice, bob):
        await page.goto(f"{server.base}/requests/{request_id}")
        await expect(page.get_by_text("Waiting on level 1 of 2: 1 × trader.")).to_be_visible()
    await live(bob)

    await alice.get_by_role("button", name="Approve").click()
    await expect(alice.get_by_text("Waiting on level 2 of 2: 1 × risk_manager.")).to_be_visible()

    await expect(bob.get_by_text("Waiting on level 2 of 2: 1 × risk_manager.")).to_be_visible(timeout=LIVE_MS)
    await expect(bob.locator(".decisions")).to_contain_text("approve by alice")
    assert await not_reloaded(bob)

    await live(alice)
    await bob.get_by_role("button", name="Approve").click()
    await expect(bob.get_by_text("Executed: the action ran once.")).to_be_visible()
    await expect(alice.get_by_text("Executed: the action ran once.")).to_be_visible(timeout=LIVE_MS)
    await expect(alice.get_by_role("button", name="Approve")).to_have_count(0)
    assert await not_reloaded(alice)


@contextmanager
def attacker_site(form: str) -> Iterator[str]:
    """Another origin on this machine (same site: another port), serving one page with `form` on it."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"<!doctype html><title>Prizes</title>{form}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_form_posted_from_another_site_is_refused_and_changes_nothing(
    browser: Browser, tokenless: tuple[Site, Served]
) -> None:
    site, server = tokenless
    request_id = await file_over_mcp(
        server.mcp, "buy_stock", {"symbol": "TSLA", "quantity": 2, "price": 200.0}
    )
    page = await sign_in_with_link(browser, server)
    form = (
        f'<form method="post" action="{server.base}/requests/{request_id}/approve">'
        '<input type="hidden" name="csrf" value="guessed"><button>Claim your prize</button></form>'
    )

    with attacker_site(form) as elsewhere:
        await page.goto(elsewhere)
        await page.get_by_role("button", name="Claim your prize").click()
        await expect(page.get_by_role("alert")).to_contain_text("this form was sent from another site")

    async with open_gate(load_settings(site.env)) as gate:
        assert (await gate.get(request_id)).status == "pending"
    assert all(order[0] != request_id for order in site.orders())


async def test_what_an_agent_wrote_is_shown_escaped_and_never_obeyed(
    browser: Browser, tokenless: tuple[Site, Served]
) -> None:
    _, server = tokenless
    email = {
        "to": "erin@example.org",
        "subject": "Invoice \u202egpj.exe",
        "body": '<img src=x id=injected onerror="document.title=1"><script>document.title="owned"</script>',
    }
    request_id = await file_over_mcp(server.mcp, "send_email", email)
    page = await sign_in_with_link(browser, server)
    await page.goto(f"{server.base}/requests/{request_id}")

    await expect(page.get_by_role("heading", level=1)).to_have_text(
        'Email erin@example.org: "Invoice \\u202egpj.exe"'
    )
    # As it will be sent (quoted-printable), and as the agent wrote it: text, never markup.
    await expect(page.locator("pre.message")).to_contain_text("<script>document.ti")
    await expect(page.locator("pre.json").first).to_contain_text('<img src=x id=injected onerror=\\"document')
    assert await page.locator("#injected").count() == 0
    assert "owned" not in await page.title() and "\u202e" not in await page.title()


async def test_the_inbox_reads_on_a_narrow_screen(browser: Browser, tokenless: tuple[Site, Served]) -> None:
    _, server = tokenless
    request_id = await file_over_mcp(
        server.mcp, "delete_database_records", {"table": "users", "condition": "age < 30"}
    )
    page = await sign_in_with_link(browser, server)
    await page.set_viewport_size({"width": 375, "height": 800})

    for path in ("/", f"/requests/{request_id}", "/history", "/report"):
        await page.goto(f"{server.base}{path}")
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"
    await page.goto(f"{server.base}/requests/{request_id}")
    await expect(page.get_by_text("2 rows of users match age < 30")).to_be_visible()
    await expect(page.get_by_role("cell", name="ann@test.com")).to_be_visible()


async def test_the_edit_form_shows_hidden_characters_and_keeps_values_left_alone_exactly(
    browser: Browser, tokenless: tuple[Site, Served]
) -> None:
    site, server = tokenless
    subject = "Invoice \u202egnp.exe"  # reads "Invoice exe.png" where it is obeyed
    body = "\nPay today\u200b.\n"  # a first line break, which HTML drops from a textarea unless told
    filed = {"to": "erin@example.org", "subject": subject, "body": body}
    request_id = await file_over_mcp(server.mcp, "send_email", filed)
    page = await sign_in_with_link(browser, server)

    await page.goto(f"{server.base}/requests/{request_id}/edit")
    await expect(page.get_by_label("subject")).to_have_value(subject)
    await expect(page.get_by_label("body")).to_have_value(body)
    notes = page.get_by_role("note")
    await expect(notes).to_have_count(2)
    await expect(notes.nth(0)).to_contain_text("Hidden characters.")
    await expect(notes.nth(0).locator("pre")).to_have_text("Invoice \\u202egnp.exe")
    await expect(notes.nth(1).locator("pre")).to_contain_text("Pay today\\u200b.")
    await expect(page.get_by_label("subject")).to_have_attribute(
        "aria-describedby", re.compile(r"\barg-\d+-escaped\b")
    )
    await expect(page.get_by_label("to")).not_to_have_attribute("aria-describedby", re.compile("escaped"))
    await page.get_by_label("to").fill("frank@example.org")
    await page.get_by_role("button", name="Review changes").click()
    await expect(page.get_by_role("row", name=re.compile("frank@example.org"))).to_be_visible()
    await expect(page.get_by_role("row", name=re.compile("subject|body"))).to_have_count(0)
    await page.get_by_role("button", name="Approve").click()
    await expect(page.get_by_text(re.compile("Failed|Executed|Running|Approved"))).to_be_visible()

    async def arguments() -> dict[str, Any]:
        async with open_gate(load_settings(site.env)) as gate:
            return dict((await gate.get(request_id)).arguments)

    assert await arguments() == {**filed, "to": "frank@example.org"}

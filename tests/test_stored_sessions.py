"""Inbox sessions kept in the store: a restart signs nobody out, every server on a shared PostgreSQL store
honours each other's sign-ins and tokens, sign-out ends a session everywhere, and an unused session ends
after `session_idle_minutes` — against real servers, a real browser and real stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx2
import pytest
from starlette.requests import Request as HttpRequest

from hitl_mcp.store.sqlite import SQLiteStore
from hitl_mcp.web.auth import SESSION_COOKIE, SignIn
from tests.cli_in_process import hitl
from tests.clock import Clock
from tests.inbox import Site, csrf_of, make_site, serve
from tests.test_auth import serving
from tests.test_cli import free_port
from tests.test_stored_tokens import initialize, made
from tests.test_web_browser import CHROMIUM, CHROMIUM_ARGS, browser_or_skip


async def test_a_restarted_server_keeps_a_browser_signed_in(tmp_path: Path) -> None:
    browser_or_skip()
    from playwright.async_api import async_playwright, expect

    site = make_site(tmp_path, tokens=True)
    port = free_port()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await (await browser.new_context()).new_page()
            with serving(site.env, tmp_path / "first.log", port=port) as url:
                base = url.removesuffix("/mcp")
                await page.goto(f"{base}/login")
                await page.get_by_label("Token").fill(site.tokens["alice"])
                await page.get_by_role("button", name="Sign in").click()
                await expect(page.get_by_role("heading", name="Waiting for a decision")).to_be_visible()
            with serving(site.env, tmp_path / "second.log", port=port):
                await page.goto(f"{base}/history")
                # Still signed in: the page, not the sign-in form, and as alice.
                assert "/login" not in page.url
                await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
                assert "alice" in await page.content()
            cookies = await page.context.cookies()
        finally:
            await browser.close()
    with sqlite3.connect(site.folder / "hitl.db") as conn:
        [(stored,)] = conn.execute("SELECT sha256 FROM sessions").fetchall()
    [cookie] = [c for c in cookies if c["name"] == SESSION_COOKIE]
    assert cookie["value"] not in stored  # only the cookie's digest is stored


@pytest.fixture
def shared(tmp_path: Path, pg_url: str) -> Site:
    site = make_site(tmp_path, tokens=True)
    return Site(site.folder, site.env | {"HITL_DB": pg_url}, site.tokens)


def signed_in(client: httpx2.Client, base: str, token: str) -> None:
    form = client.get(f"{base}/login")
    signed = client.post(f"{base}/login", data={"csrf": csrf_of(form.text), "token": token, "next": "/"})
    assert signed.status_code == 303, signed.text


def test_servers_on_one_postgresql_store_honour_each_others_sessions_and_tokens(shared: Site) -> None:
    with (
        serve(shared, "a.log") as first,
        serve(shared, "b.log") as second,
        httpx2.Client(timeout=30) as browser,
    ):
        signed_in(browser, first.base, shared.tokens["alice"])
        assert browser.get(f"{second.base}/history").status_code == 200  # the cookie is host-wide

        secret = made(shared.env, "dave", "--name", "dave-bot")
        assert initialize(first.mcp, secret) == 200 and initialize(second.mcp, secret) == 200
        assert hitl(shared.env, "token", "revoke", "dave-bot").returncode == 0
        assert initialize(first.mcp, secret) == 401 and initialize(second.mcp, secret) == 401

        cookie = browser.cookies.get(SESSION_COOKIE)
        assert cookie is not None
        page = browser.get(f"{second.base}/history")
        out = browser.post(f"{second.base}/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code in (200, 303), out.text
        # Signed out on one server, the cookie (kept, as a thief would) is refused by the other too.
        with httpx2.Client(timeout=30, cookies={SESSION_COOKIE: cookie}) as replay:
            assert replay.get(f"{first.base}/history", follow_redirects=False).status_code == 303


def request_with(cookie: str | None) -> HttpRequest:
    headers = [(b"cookie", f"{SESSION_COOKIE}={cookie}".encode())] if cookie else []
    return HttpRequest(
        {"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""}
    )


async def test_a_session_ends_when_left_unused_or_at_its_absolute_end(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    store = SQLiteStore(tmp_path / "hitl.db")
    await store.open()
    try:
        sign_in = SignIn(None, session_seconds=3600, idle_seconds=600, clock=clock, store=store)
        session_id, _ = await sign_in.start("alice", roles=("trader",))
        for _ in range(5):  # used every 9 minutes: kept alive past the idle time
            clock.now += 540
            session = await sign_in.session_of(request_with(session_id))
            assert session is not None and session.roles == ("trader",)
        clock.now += 3600 - 5 * 540
        assert await sign_in.session_of(request_with(session_id)) is None  # its absolute end

        idle_id, _ = await sign_in.start("bob")
        clock.now += 601
        assert await sign_in.session_of(request_with(idle_id)) is None
        assert await sign_in.session_of(request_with("made-up")) is None

        # Ended sessions do not pile up in the store: a sign-in an hour on deletes them.
        clock.now += 3600
        await sign_in.start("carol")
        assert await store.session_prune(clock.now, 600) == 0
    finally:
        await store.close()

"""Signing in to the inbox through a real OpenID Provider (panva's oidc-provider on loopback) in a real
browser (Debian's Chromium): the button, the provider's login, the callback, the session, signing out; and a
callback nobody began signs nobody in."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx2
import pytest
from playwright.async_api import Browser, Page, expect

from tests.inbox import Site, make_site
from tests.oidc_provider import Provider, oidc_provider
from tests.test_auth import serving
from tests.test_cli import free_port
from tests.test_web_browser import browser, browser_or_skip, file_over_mcp, new_page

__all__ = ["browser"]  # the module's Chromium, shared with the other browser tests' way of starting it

ACCOUNTS = {
    "alice": {"email": "Alice@Example.com", "groups": ["trader"]},
    "dave": {"email": "dave@example.com", "groups": ["interns"]},
}


class SsoSite:
    def __init__(self, site: Site, base: str, provider: Provider) -> None:
        self.site, self.base, self.provider = site, base, provider


@pytest.fixture(scope="module")
def sso_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoSite]:
    browser_or_skip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with oidc_provider([f"{base}/auth/callback"], accounts=ACCOUNTS) as provider:
        oidc = (
            f'\n[web.oidc]\nissuer = "{provider.issuer}"\nclient_id = "{provider.client_id}"\n'
            f'client_secret = "${{TEST_OIDC_SECRET}}"\nroles_claim = "groups"\n'
            'scopes = ["openid", "email", "groups"]\n'
        )
        site = make_site(tmp_path_factory.mktemp("sso"), tokens=True, extra=oidc)
        env = site.env | {"TEST_OIDC_SECRET": provider.client_secret}
        with serving(env, site.folder / "server.log", port=port):
            yield SsoSite(site, base, provider)


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def sign_in_with_sso(browser: Browser, base: str, login: str, path: str = "/") -> Page:
    page = await new_page(browser)
    await page.goto(f"{base}{path}")
    await page.get_by_role("link", name="Sign in with SSO").click()
    # The provider's own development login page: any name, any password.
    await page.locator("input[name=login]").fill(login)
    await page.locator("input[name=password]").fill("whatever")
    await page.locator("button[type=submit]").click()
    await expect(page.get_by_text("Signed in as")).to_be_visible()
    return page


async def test_a_person_signs_in_with_sso_and_out_again(sso_site: SsoSite, browser: Browser) -> None:
    page = await sign_in_with_sso(browser, sso_site.base, "alice", "/history")
    await expect(page.get_by_text("Signed in as")).to_contain_text("alice@example.com")
    assert page.url == f"{sso_site.base}/history"  # back where the person was going

    await page.get_by_role("button", name="Sign out").click()
    link = page.get_by_role("link", name="Sign out at your sign-in provider too")
    ends_there = re.escape(f"{sso_site.provider.issuer}/session/end?") + ".*id_token_hint="
    await expect(link).to_have_attribute("href", re.compile(ends_there))
    await page.goto(f"{sso_site.base}/")
    await expect(page.get_by_role("link", name="Sign in with SSO")).to_be_visible()


async def test_a_callback_nobody_began_here_signs_nobody_in(sso_site: SsoSite) -> None:
    with httpx2.Client(base_url=sso_site.base, timeout=30) as client:
        forged = client.get("/auth/callback", params={"code": "stolen", "state": "forged"})
        assert forged.status_code == 401
        assert "already used or expired: nobody was signed in" in forged.text
        assert "hitl_session" not in forged.headers.get("set-cookie", "")
        assert client.get("/", follow_redirects=False).status_code == 303  # still signed out


async def test_the_roles_the_provider_gives_decide_what_a_person_may_approve(
    sso_site: SsoSite, browser: Browser
) -> None:
    """Neither person is in the config: the `groups` claim alone makes alice a trader, and dave is not."""
    order = {"symbol": "MSFT", "quantity": 10, "price": 150.0}  # one trader approves it
    request_id = await file_over_mcp(
        f"{sso_site.base}/mcp", "buy_stock", order, sso_site.site.tokens["agent"]
    )

    dave = await sign_in_with_sso(browser, sso_site.base, "dave", f"/requests/{request_id}")
    await dave.get_by_role("button", name="Approve").click()
    await expect(dave.locator(".refusal")).to_contain_text("dave@example.com holds interns")

    alice = await sign_in_with_sso(browser, sso_site.base, "alice", f"/requests/{request_id}")
    await alice.get_by_role("button", name="Approve").click()
    await expect(alice.get_by_text("Executed: the action ran once.")).to_be_visible()
    assert [order_id for order_id, _, _ in sso_site.site.orders()] == [request_id]

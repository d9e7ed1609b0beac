"""Who is signed in to the inbox: sign-in links and tokens, the session cookie, CSRF and origins, the headers
every response sends — against real `hitl serve --http` processes on loopback."""

from __future__ import annotations

import getpass
import json
import re
import sqlite3
import tomllib
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from hitl_mcp.config import OidcSettings, WebSettings, fold_principal, load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.notify import render
from hitl_mcp.web.pages import local_path
from tests.inbox import Served, Site, csrf_of, make_site, serve
from tests.test_cli import file_request
from tests.test_examples import EXAMPLE, uncommented

OS_USER = fold_principal(getpass.getuser())
BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}


@pytest.fixture(scope="module")
def tokenless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    site = make_site(tmp_path_factory.mktemp("tokenless"), tokens=False)
    with serve(site) as served:
        yield site, served


@pytest.fixture(scope="module")
def with_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    site = make_site(tmp_path_factory.mktemp("tokens"), tokens=True)
    with serve(site) as served:
        yield site, served


def cookie_line(response: httpx2.Response, name: str) -> str:
    lines = [line for line in response.headers.get_list("set-cookie") if line.startswith(f"{name}=")]
    assert len(lines) == 1, response.headers.get_list("set-cookie")
    return lines[0]


def test_the_printed_link_signs_the_os_user_in_only_when_its_button_is_pressed(
    tokenless: tuple[Site, Served],
) -> None:
    _, server = tokenless
    link = server.sign_in_link()
    [line] = [line for line in server.log.read_text().splitlines() if link in line]

    with httpx2.Client(timeout=30) as browser:
        opened = browser.get(link)
        queue_after_get = browser.get(f"{server.base}/")
        signed = browser.post(
            f"{server.base}/login",
            data={"csrf": csrf_of(opened.text), "token": link.rsplit("=", 1)[1], "next": "/"},
        )
        queue = browser.get(f"{server.base}/")

    assert OS_USER in line and link.startswith(f"{server.base}/login?token=")
    assert opened.status_code == 200 and f">{OS_USER}<" in opened.text
    assert re.search(r'<button type="submit"[^>]*>Sign in</button>', opened.text)
    # Opening the link (as a mail scanner would) signs nobody in.
    assert all(not line.startswith("hitl_session=") for line in opened.headers.get_list("set-cookie"))
    assert queue_after_get.status_code == 303 and queue_after_get.headers["location"] == "/login?next=%2F"
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    cookie = cookie_line(signed, "hitl_session").lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    assert queue.status_code == 200 and f"Signed in as <strong>{OS_USER}</strong>" in queue.text


def test_a_configured_token_signs_its_principal_in_and_a_wrong_one_nobody(
    with_tokens: tuple[Site, Served],
) -> None:
    site, server = with_tokens
    with server.signed_in(site.tokens["alice"]) as alice, httpx2.Client(base_url=server.base) as stranger:
        queue = alice.get("/")
        form = stranger.get("/login")
        wrong = stranger.post("/login", data={"csrf": csrf_of(form.text), "token": "guess", "next": "/"})

    assert "Signed in as <strong>alice</strong>" in queue.text
    assert re.search(r'<label for="token">Token</label>', form.text)
    assert wrong.status_code == 401 and "not one this server knows" in wrong.text
    assert all(not line.startswith("hitl_session=") for line in wrong.headers.get_list("set-cookie"))
    # With tokens configured, nothing prints a link that would sign anyone in without one.
    assert "login?token=" not in server.log.read_text()


def test_the_session_cookie_is_secure_when_the_inbox_is_public_over_https(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True, extra='\n[web]\npublic_url = "https://inbox.example.com/"\n')
    with serve(site) as server, httpx2.Client(base_url=server.base) as browser:
        form = browser.get("/login")
        # A client keeps a Secure cookie from a plain-http server to itself; a browser behind the https proxy
        # would send it back.
        login_cookie = cookie_line(form, "hitl_login").split(";")[0]
        signed = browser.post(
            "/login",
            data={"csrf": csrf_of(form.text), "token": site.tokens["bob"]},
            headers={"Cookie": login_cookie},
        )

    assert "secure" in cookie_line(form, "hitl_login").lower()
    assert "secure" in cookie_line(signed, "hitl_session").lower()


def test_a_form_post_needs_this_origin_and_the_sessions_csrf_token(with_tokens: tuple[Site, Served]) -> None:
    site, server = with_tokens
    request_id = file_request(load_settings(site.env), "buy_stock", BUY)
    own = {"Origin": server.base}
    with server.signed_in(site.tokens["alice"]) as alice:
        csrf = csrf_of(alice.get(f"/requests/{request_id}").text)
        url = f"/requests/{request_id}/approve"
        missing = alice.post(url, data={}, headers=own)
        wrong = alice.post(url, data={"csrf": "x" * len(csrf)}, headers=own)
        foreign = alice.post(url, data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
        cross_site = alice.post(url, data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
        status_after_refusals = alice.get(f"/api/v1/requests/{request_id}").json()["status"]
        accepted = alice.post(url, data={"csrf": csrf, "reason": "fine"}, headers=own)
        status_after = alice.get(f"/api/v1/requests/{request_id}").json()["status"]

    for refused in (missing, wrong):
        assert refused.status_code == 403 and "CSRF token is missing or out of date" in refused.text
    for refused in (foreign, cross_site):
        assert refused.status_code == 403 and "sent from another site" in refused.text
    assert status_after_refusals == "pending"
    assert accepted.status_code == 303 and status_after == "executed"


def test_signing_in_needs_the_login_forms_own_token(with_tokens: tuple[Site, Served]) -> None:
    site, server = with_tokens
    with httpx2.Client(base_url=server.base) as browser:
        refused = browser.post("/login", data={"csrf": "made-up", "token": site.tokens["alice"]})

    assert refused.status_code == 403
    assert all(not line.startswith("hitl_session=") for line in refused.headers.get_list("set-cookie"))


def test_every_response_sends_the_security_headers_and_pages_load_nothing_from_elsewhere(
    with_tokens: tuple[Site, Served],
) -> None:
    site, server = with_tokens
    with server.signed_in(site.tokens["bob"]) as bob:
        responses = [
            bob.get(path)
            for path in ("/", "/history", "/report", "/login", "/static/inbox.js", "/no-such-page")
        ]
        responses.append(bob.get("/api/v1/requests", headers={"Authorization": "Bearer wrong"}))

    for response in responses:
        headers = response.headers
        assert headers["content-security-policy"].startswith("default-src 'self'"), response.url
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    pages = [response.text for response in responses[:4]]
    for page in pages:
        linked = re.findall(r'(?:src|href|action)="([^"]*)"', page)
        assert linked and all(link.startswith(("/", "#")) for link in linked), linked
        assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page


def test_a_host_name_that_is_not_this_server_is_refused(tokenless: tuple[Site, Served]) -> None:
    _, server = tokenless
    port = server.base.rsplit(":", 1)[1]
    with httpx2.Client(base_url=server.base) as client:
        rebound = client.get("/login", headers={"Host": f"evil.example:{port}"})
        api = client.get("/api/v1/openapi.json", headers={"Host": f"evil.example:{port}"})
        named = client.get("/login", headers={"Host": f"localhost:{port}"})

    assert rebound.status_code == 421 and api.status_code == 421
    assert api.headers["content-type"] == "application/problem+json"
    assert named.status_code == 200


def test_a_signed_in_browser_may_read_the_api_but_never_change_anything_through_it(
    with_tokens: tuple[Site, Served],
) -> None:
    site, server = with_tokens
    request_id = file_request(load_settings(site.env), "buy_stock", BUY)
    with server.signed_in(site.tokens["alice"]) as alice:
        read = alice.get(f"/api/v1/requests/{request_id}")
        approved = alice.post(f"/api/v1/requests/{request_id}/approve", json={})
        after = alice.get(f"/api/v1/requests/{request_id}").json()["status"]

    assert read.status_code == 200
    assert approved.status_code == 401 and "Bearer TOKEN" in approved.json()["detail"]
    assert after == "pending"


def test_signing_out_ends_the_session(with_tokens: tuple[Site, Served]) -> None:
    site, server = with_tokens
    with server.signed_in(site.tokens["bob"]) as bob:
        csrf = csrf_of(bob.get("/").text)
        cookie = bob.cookies["hitl_session"]
        out = bob.post("/logout", data={"csrf": csrf}, headers={"Origin": server.base})
    with httpx2.Client(base_url=server.base, cookies={"hitl_session": cookie}) as replayed:
        after = replayed.get("/")

    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert after.status_code == 303 and after.headers["location"].startswith("/login")


def test_a_link_followed_from_another_site_reopens_here_so_the_strict_cookie_comes_along(
    tokenless: tuple[Site, Served],
) -> None:
    _, server = tokenless
    with httpx2.Client(base_url=server.base) as mail_client:
        opened = mail_client.get("/requests/0123456789", headers={"Sec-Fetch-Site": "cross-site"})
        direct = mail_client.get("/requests/0123456789")

    assert opened.status_code == 200
    assert '<meta http-equiv="refresh" content="0; url=/requests/0123456789">' in opened.text
    assert direct.status_code == 303 and direct.headers["location"] == "/login?next=%2Frequests%2F0123456789"
    assert [local_path(p) for p in ("//evil.example", "/\\evil.example", "https://evil.example", "/x?y")] == [
        "/",
        "/",
        "/",
        "/x?y",
    ]


def test_the_inbox_stays_off_when_the_os_user_is_the_principal_tokenless_clients_act_as(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, tokens=False)
    env = {**site.env, "HITL_PRINCIPAL": OS_USER.upper()}
    with serve(site, env=env) as server, httpx2.Client(base_url=server.base) as client:
        inbox = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        login = client.get("/login")
        as_json = client.get("/", headers={"Accept": "application/json"})
        api = client.get("/api/v1/requests")
        style = client.get("/static/inbox.css")
        mcp = client.post("/mcp", json={}, headers={"Accept": "application/json, text/event-stream"})

    log = server.log.read_text()
    why = (
        f"your OS user &#39;{OS_USER}&#39; is also HITL_PRINCIPAL, the principal MCP clients without a token"
    )
    assert f"the inbox and /api/v1 are off: your OS user '{OS_USER}' is also HITL_PRINCIPAL" in log
    assert "login?token=" not in log
    # Not a bare "Not Found": a page that says why, and both ways out.
    assert inbox.status_code == 404 and inbox.headers["content-type"].startswith("text/html")
    assert "The inbox is off" in inbox.text and why in inbox.text
    assert (
        "<code>hitl token new NAME</code>" in inbox.text and "HITL_PRINCIPAL=agent hitl serve" in inbox.text
    )
    assert inbox.headers["content-security-policy"].startswith("default-src 'self'")
    assert login.status_code == 404 and "The inbox is off" in login.text
    for answer in (as_json, api):
        assert answer.status_code == 404 and answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"].startswith("the inbox and /api/v1 are off: your OS user")
        assert "hitl token new NAME" in answer.json()["detail"]
    assert style.status_code == 200
    assert mcp.status_code != 404


def test_every_web_setting_is_shown_in_the_example() -> None:
    restored = tomllib.loads(uncommented(EXAMPLE.read_text(encoding="utf-8")))

    assert set(restored["web"]) == set(WebSettings.model_fields)
    assert set(restored["web"]["oidc"]) == set(OidcSettings.model_fields)
    assert WebSettings.model_validate(restored["web"]).public_url == "https://hitl.example.com"


def test_notifications_link_to_the_request_page_when_the_public_url_is_set(tmp_path: Path) -> None:
    notify = '\n[[notify]]\non = ["filed"]\nwebhook = "http://127.0.0.1:9/hook"\n'
    site = make_site(tmp_path, tokens=False, extra=notify)
    settings = load_settings(site.env)

    async def file() -> str:
        async with open_gate(settings) as gate:
            return (await gate.file("buy_stock", BUY, "agent")).request_id

    request_id = anyio.run(file)
    with sqlite3.connect(settings.db_path) as conn:
        [(payload_text,)] = conn.execute("SELECT payload FROM outbox").fetchall()
    payload = json.loads(payload_text)
    page = f"https://inbox.example.com/requests/{request_id}"

    assert f"Open:     {page}" in render.text(payload, public_url="https://inbox.example.com/")
    assert render.webhook_body(payload, 1, public_url="https://inbox.example.com")["url"] == page
    assert f"<{page}|Open in the inbox>" in json.dumps(
        render.slack_body(payload, public_url="https://inbox.example.com")
    )
    assert "url" not in render.webhook_body(payload, 1) and "Open:" not in render.text(payload)

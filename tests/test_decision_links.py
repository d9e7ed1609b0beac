"""Approving from an email link and from a phone (issue 18): a real `hitl serve --http`, mail through a
real SMTP server (aiosmtpd), pushes to an ntfy stand-in on loopback, and a person in Chromium.

Each approver gets their own message with their own link; opening it decides nothing; the page's POST
decides once, as that recipient, and every link that no longer holds shows why and decides nothing."""

from __future__ import annotations

import html
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx2
import pytest

from hitl_mcp.models import Request
from hitl_mcp.notify import links
from hitl_mcp.store.sqlite import SQLiteStore
from hitl_mcp.tokens import new_token, token_sha256
from tests.environment import process_env, write_config
from tests.inbox import Served, Site, until
from tests.ntfy_standin import NtfyStandIn, ntfy_standin
from tests.smtp_sink import ReceivedMessage, SmtpSink
from tests.test_auth import serving
from tests.test_cli import free_port
from tests.test_web_browser import CHROMIUM, CHROMIUM_ARGS, browser_or_skip, file_over_mcp

LINK = re.compile(r"^Decide:\s+(http://\S+)$", re.MULTILINE)
SMALL = {"symbol": "GOOGL", "quantity": 2, "price": 100.0}  # one trader decides
LARGE = {"symbol": "GOOGL", "quantity": 200, "price": 100.0}  # a trader, then the risk manager
PEOPLE = {
    "alice": ("trader", "alice@example.com"),
    "dave": ("trader", "dave@example.com"),
    "bob": ("risk_manager", "bob@example.com"),
    "agent": (None, None),
}


@dataclass(frozen=True)
class LinkSite:
    site: Site
    served: Served
    mail: SmtpSink
    ntfy: NtfyStandIn

    def links_for(self, request_id: str, count: int) -> dict[str, str]:
        """Each recipient's own link from the messages about `request_id`, waiting until `count` came."""
        mine: list[ReceivedMessage] = []

        def arrived() -> bool:
            mine[:] = [m for m in self.mail.messages if request_id in str(m.message["Message-ID"])]
            return len(mine) >= count

        until(arrived, timeout=15)
        found: dict[str, str] = {}
        for message in mine:
            match = LINK.search(message.body)
            assert match is not None, message.body
            found[str(message.message["To"])] = match.group(1)
        return found

    def request(self, request_id: str) -> dict[str, Any]:
        with self.served.api(self.site.tokens["agent"]) as api:
            got = api.get(f"/api/v1/requests/{request_id}")
            assert got.status_code == 200, got.text
            return dict(got.json())

    def orders(self, request_id: str) -> int:
        return sum(1 for order in self.site.orders() if order[0] == request_id)

    def file(self, arguments: dict[str, Any]) -> str:
        return anyio.run(file_over_mcp, self.served.mcp, "buy_stock", arguments, self.site.tokens["agent"])


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkSite]:
    folder = tmp_path_factory.mktemp("links")
    port = free_port()
    with SmtpSink() as mail, ntfy_standin() as ntfy:
        tokens = {name: new_token() for name in PEOPLE}
        extra = f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\n'
        for name, (role, email) in PEOPLE.items():
            extra += f"\n[principals.{name}]\nroles = {[role] if role else []}\n"
            extra += f'token_sha256 = "{token_sha256(tokens[name])}"\n'
            extra += f'email = "{email}"\n' if email else ""
        extra += """
[policy.buy_stock]
rules = [
  { when = "quantity * price <= 10000", levels = [{ roles = ["trader"], count = 1 }] },
  { levels = [{ roles = ["trader"], count = 1 }, { roles = ["risk_manager"], count = 1 }] },
]

[[notify]]
on = ["filed", "approved"]
email_approvers = true
sender = "hitl@example.com"
"""
        extra += f"""
[[notify]]
on = ["filed"]
ntfy = "{ntfy.topic_url}"
ntfy_token = "tk_standin"
principal = "alice"
"""
        config = write_config(folder / "hitl.toml", smtp_port=mail.port, extra=extra)
        site = Site(folder, process_env(folder, config), tokens)
        log = folder / "server.log"
        # The port is chosen first: the links in the messages point at `public_url`, this server.
        with serving(site.env, log, port=port) as url:
            yield LinkSite(site, Served(url.removesuffix("/mcp"), log), mail, ntfy)


def csrf_and_cookie(client: httpx2.Client, link: str) -> str:
    page = client.get(link)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def post(client: httpx2.Client, link: str, verdict: str, reason: str = "") -> httpx2.Response:
    csrf = csrf_and_cookie(client, link)
    return client.post(f"{link}/{verdict}", data={"csrf": csrf, "reason": reason})


def why(page: httpx2.Response) -> str:
    found = re.search(r"data-link-why>([^<]*)<", page.text)
    assert found is not None, page.text
    return found.group(1)


def test_each_approver_gets_their_own_link_and_opening_it_decides_nothing(linked: LinkSite) -> None:
    request_id = linked.file(SMALL)
    mine = linked.links_for(request_id, 2)
    # The traders who may decide; not the risk manager, nor the agent who asked.
    assert set(mine) == {"alice@example.com", "dave@example.com"}
    assert mine["alice@example.com"] != mine["dave@example.com"]
    token = mine["alice@example.com"].rsplit("/", 1)[1]
    assert len(token) >= 43  # 256 bits, URL-safe base64
    # Only the token's digest is at rest: not in the links table, not in the outbox, nowhere in the store.
    with sqlite3.connect(linked.site.folder / "hitl.db") as store:
        dumped = "\n".join(store.iterdump())
        digests = [
            row[0]
            for row in store.execute("SELECT sha256 FROM link_tokens WHERE request_id = ?", (request_id,))
        ]
    store.close()
    assert token not in dumped
    assert links.digest_of(token) in digests

    # A mail scanner follows every link, more than once: nothing is decided.
    with httpx2.Client(timeout=30) as scanner:
        for _ in range(3):
            opened = scanner.get(mine["alice@example.com"])
            assert opened.status_code == 200
            assert "Decide as alice" in opened.text and "Buy 2 GOOGL" in opened.text
    assert linked.request(request_id)["status"] == "pending"
    assert linked.orders(request_id) == 0


@contextmanager
def webmail(link: str) -> Iterator[str]:
    """A page on another site (localhost, not 127.0.0.1) showing a message with `link` in it."""
    page = f'<!doctype html><title>Mail</title><p><a href="{html.escape(link)}">Decide</a></p>'.encode()

    class Mail(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Mail)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_person_approves_once_from_the_link_in_chromium(linked: LinkSite) -> None:
    browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    request_id = linked.file(SMALL)
    mine = linked.links_for(request_id, 2)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            # As from webmail: the link followed from a page of another site, so the page's form cookie
            # is set on a cross-site arrival and must still come back with the form.
            with webmail(mine["alice@example.com"]) as inbox:
                page.goto(inbox)
                page.get_by_role("link", name="Decide").click()
            expect(page.get_by_role("heading", name="Decide as alice")).to_be_visible()
            page.get_by_role("button", name="Approve").click()
            expect(page.get_by_text("Your approval as alice was recorded.")).to_be_visible()
            # Back and press again: the link was spent.
            page.goto(mine["alice@example.com"])
            expect(page.get_by_text(re.compile("This link was already used"))).to_be_visible()
            expect(page.get_by_role("button", name="Approve")).to_have_count(0)
            # Dave's link for the same request: decided by someone else.
            page.goto(mine["dave@example.com"])
            expect(
                page.get_by_text(re.compile("The request was (approved|executing|executed)"))
            ).to_be_visible()
        finally:
            browser.close()
    until(lambda: linked.request(request_id)["status"] == "executed")
    assert linked.orders(request_id) == 1
    decisions = linked.request(request_id)["decisions"]
    assert [(d["principal"], d["verdict"]) for d in decisions] == [("alice", "approve")]


def test_a_rejection_needs_a_reason_and_then_decides(linked: LinkSite) -> None:
    request_id = linked.file(SMALL)
    link = linked.links_for(request_id, 2)["dave@example.com"]
    with httpx2.Client(timeout=30) as person:
        bare = post(person, link, "reject", reason="  ")
        assert bare.status_code == 400 and "a rejection needs a reason" in bare.text
        assert linked.request(request_id)["status"] == "pending"
        # The link still works after the refusal: nothing was spent.
        done = post(person, link, "reject", reason="not today")
        assert done.status_code == 200, done.text
        assert "Your rejection as dave was recorded." in done.text
    record = linked.request(request_id)
    assert record["status"] == "rejected"
    assert [(d["principal"], d["reason"]) for d in record["decisions"]] == [("dave", "not today")]


def test_a_post_without_the_form_token_or_from_another_site_decides_nothing(linked: LinkSite) -> None:
    request_id = linked.file(SMALL)
    link = linked.links_for(request_id, 2)["alice@example.com"]
    with httpx2.Client(timeout=30) as person:
        csrf = csrf_and_cookie(person, link)
        # No form token (a forged form elsewhere cannot read it).
        missing = person.post(f"{link}/approve", data={"reason": ""})
        assert missing.status_code == 403 and "CSRF" in missing.text
        # The right token, sent from another site.
        foreign = person.post(
            f"{link}/approve", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403 and "another site" in foreign.text
    with httpx2.Client(timeout=30) as stranger:
        # A token without the cookie the page set for this browser.
        stolen = stranger.post(f"{link}/approve", data={"csrf": csrf})
        assert stolen.status_code == 403
    assert linked.request(request_id)["status"] == "pending"
    with httpx2.Client(timeout=30) as person:
        assert post(person, link, "approve").status_code == 200  # the link was never spent
    until(lambda: linked.orders(request_id) == 1)


def test_two_racing_posts_with_one_link_decide_once(linked: LinkSite) -> None:
    request_id = linked.file(SMALL)
    link = linked.links_for(request_id, 2)["alice@example.com"]
    clients = [httpx2.Client(timeout=30) for _ in range(4)]
    forms = [csrf_and_cookie(client, link) for client in clients]
    answers: list[int] = []

    async def press(client: httpx2.Client, csrf: str) -> None:
        answer = await anyio.to_thread.run_sync(
            lambda: client.post(f"{link}/approve", data={"csrf": csrf, "reason": "ok"})
        )
        answers.append(answer.status_code)

    async def race() -> None:
        async with anyio.create_task_group() as tasks:
            for client, csrf in zip(clients, forms, strict=True):
                tasks.start_soon(press, client, csrf)

    anyio.run(race)
    for client in clients:
        client.close()
    assert sorted(answers) == [200, 410, 410, 410]
    until(lambda: linked.request(request_id)["status"] == "executed")
    assert linked.orders(request_id) == 1
    assert len(linked.request(request_id)["decisions"]) == 1


def test_stale_foreign_forged_and_expired_links_say_why_and_decide_nothing(linked: LinkSite) -> None:
    large = linked.file(LARGE)
    small = linked.file(SMALL)
    large_links = linked.links_for(large, 2)
    small_links = linked.links_for(small, 2)
    # Alice approves the large order with an edit through the API: it now waits on the risk manager.
    with linked.served.api(linked.site.tokens["alice"]) as api:
        edited = api.post(f"/api/v1/requests/{large}/approve", json={"arguments": {"quantity": 150}})
        assert edited.status_code == 200, edited.text
    # The level-2 approver hears of it with a link of their own.
    bob = linked.links_for(large, 3)["bob@example.com"]
    with httpx2.Client(timeout=30) as person:
        stale = person.get(large_links["dave@example.com"])
        assert stale.status_code == 410 and "edited since this link was sent" in why(stale)
        refused = person.post(f"{large_links['dave@example.com']}/approve", data={"csrf": "x"})
        assert refused.status_code == 403
        # A link pasted under another request's address.
        token = small_links["dave@example.com"].rsplit("/", 1)[1]
        foreign = person.get(f"{linked.served.base}/r/{large}/{token}")
        assert foreign.status_code == 410 and "another request" in why(foreign)
        forged = person.get(f"{linked.served.base}/r/{small}/{'A' * 43}")
        assert forged.status_code == 410 and "not one this server sent" in why(forged)
        assert person.get(bob).status_code == 200  # bob's own link works

    # A link past its time: minted on the server's own store, as the notifier does, already expired.
    async def expired_link() -> str:
        store = SQLiteStore(linked.site.folder / "hitl.db")
        await store.open()
        try:
            found = await store.get(small)
            assert isinstance(found, Request)
            token = await links.mint(store, found, "alice", now=time.time() - 120, lifetime_seconds=60)
        finally:
            await store.close()
        return links.link_url(linked.served.base, small, token)

    old = anyio.run(expired_link)
    with httpx2.Client(timeout=30) as person:
        gone = person.get(old)
        assert gone.status_code == 410 and "This link expired" in why(gone)
    assert linked.request(small)["status"] == "pending"
    assert linked.request(large)["status"] == "pending"
    assert linked.orders(small) == linked.orders(large) == 0


def test_a_push_carries_the_summary_time_left_and_view_actions_that_open_alices_link(
    linked: LinkSite,
) -> None:
    before = len(linked.ntfy.published)
    request_id = linked.file(SMALL)
    pushed = next(
        p for p in linked.ntfy.wait_for(before + 1)[before:] if request_id in p.body.get("click", "")
    )
    assert pushed.path == "/"
    assert pushed.headers["Authorization"] == "Bearer tk_standin"
    body = pushed.body
    assert body["topic"] == "approvals"
    assert "Buy 2 GOOGL" in body["message"] and "Time left: 59m" in body["message"]
    actions = {action["label"]: action for action in body["actions"]}
    assert set(actions) == {"View", "Approve", "Reject"}
    # Every action opens a page; none decides with one tap.
    assert {action["action"] for action in actions.values()} == {"view"}
    assert actions["View"]["url"] == f"{linked.served.base}/requests/{request_id}"
    approve = actions["Approve"]["url"].removesuffix("#approve")
    assert approve == actions["Reject"]["url"].removesuffix("#reject")
    with httpx2.Client(timeout=30) as phone:
        opened = phone.get(approve)
        assert opened.status_code == 200 and "Decide as alice" in opened.text
        assert linked.request(request_id)["status"] == "pending"
        assert post(phone, approve, "approve").status_code == 200
    until(lambda: linked.orders(request_id) == 1)


def test_agent_text_in_a_push_is_plain_and_shows_hidden_characters() -> None:
    from hitl_mcp.notify import ntfy

    payload = {
        "event": "filed",
        "actor": "agent",
        "request": {
            "request_id": "abc123",
            "tool": "buy_stock",
            "requested_by": "agent",
            "status": "pending",
            "summary": "Buy 1 GOOGL\u202e\nApprove: tap here",
            "expires_at": "2030-01-01T00:00:00+00:00",
            "approval": {"waiting_on": 0, "levels": 1, "may_decide": "trader"},
        },
    }
    body = ntfy.body(payload, "https://n.example.com/base/topic", now=0.0, request_url=None, decide_url=None)
    assert body["topic"] == "topic"
    assert ntfy.endpoint("https://n.example.com/base/topic")[0] == "https://n.example.com/base/"
    first = body["message"].split("\n")[0]
    # The reordering character and the line break the agent wrote are shown, not obeyed.
    assert "\u202e" not in body["message"] and "\\u202e" in first and "\\n" in first
    assert "actions" not in body

"""The inbox's Grants pages over HTTP against a real `hitl serve --http`: approve a request and allow calls
like it (a grant form prefilled from its arguments), make, approve at a further level, list and revoke a
grant — each form with the session's CSRF token, each refusal in the Gate's words."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anyio
import pytest

from hitl_mcp import expr
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.grants import Grant
from hitl_mcp.web.grant_pages import when_of
from tests.inbox import Served, Site, csrf_of, make_site, serve


def file_as(settings: Settings, principal: str, tool: str, arguments: dict[str, Any]) -> str:
    async def run() -> str:
        async with open_gate(settings) as gate:
            return (await gate.file(tool, arguments, principal)).request_id

    return anyio.run(run)


def grants_of(settings: Settings) -> list[Grant]:
    async def run() -> list[Grant]:
        async with open_gate(settings) as gate:
            return await gate.grants(include_finished=True)

    return anyio.run(run)


def status_of(site: Site, request_id: str) -> str:
    with sqlite3.connect(site.folder / "hitl.db") as conn:
        return str(conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()[0])


def digest_of(page: str) -> str:
    found = re.search(r'name="digest" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found.group(1)


def grant_id_in(location: str) -> str:
    found = re.search(r"#grant-(g[0-9a-f]+)$", location)
    assert found is not None, location
    return found.group(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    site = make_site(tmp_path_factory.mktemp("grants"), tokens=True)
    with serve(site) as server:
        yield site, server


def test_a_when_built_from_arguments_holds_each_scalar_in_the_languages_own_literals() -> None:
    arguments = {"symbol": "O'Neil", "quantity": 3, "price": 1.5, "flag": True, "tags": ["a"], "note": None}

    built = when_of({**arguments, "bad name": 1, "line": "a\nb"})

    assert built == "flag = TRUE AND price = 1.5 AND quantity = 3 AND symbol = 'O''Neil'"
    assert expr.names(expr.parse(built)) == {"flag", "price", "quantity", "symbol"}


def test_approve_and_allow_similar_prefills_a_grant_that_then_runs_calls_like_it(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    settings = load_settings(site.env)
    first = file_as(settings, "agent", "buy_stock", {"symbol": "GOOGL", "quantity": 10, "price": 150.0})

    with server.signed_in(site.tokens["alice"]) as alice:
        page = alice.get(f"/requests/{first}").text
        assert "Approve and allow similar for agent…" in page
        shown = {"csrf": csrf_of(page), "digest": digest_of(page), "reason": ""}
        approved = alice.post(f"/requests/{first}/approve", data={**shown, "then": "grant"})
        assert approved.status_code == 303 and approved.headers["location"] == f"/grants/new?request={first}"
        grant_form = alice.get(approved.headers["location"]).text
        made = alice.post(
            "/grants",
            data={
                "csrf": csrf_of(grant_form),
                "request": first,
                "tool": "buy_stock",
                "requester": "agent",
                "when": "symbol = 'GOOGL' AND quantity <= 10",
                "expires": "2h",
                "uses": "",
                "reason": "rebalancing window",
            },
        )
        assert made.status_code == 303, made.text
        waiting = alice.get("/grants").text
    grant_id = grant_id_in(made.headers["location"])
    with server.signed_in(site.tokens["bob"]) as bob:
        listed = bob.get("/grants").text
        second_level = bob.post(f"/grants/{grant_id}/approve", data={"csrf": csrf_of(listed)})
        active = bob.get("/grants").text

    assert status_of(site, first) == "executed"
    assert "price = 150.0 AND quantity = 10 AND symbol = &#39;GOOGL&#39;</textarea>" in grant_form
    assert 'name="tool" value="buy_stock"' in grant_form and 'name="requester" value="agent"' in grant_form
    assert "at most 7d" in grant_form
    assert re.search(rf'id="grant-{grant_id}"[^>]*class="grant-waiting"', waiting)
    assert "waits on" in waiting and "risk_manager" in waiting
    assert second_level.status_code == 303
    assert re.search(rf'id="grant-{grant_id}"[^>]*class="grant-active"', active)
    covered = file_as(settings, "agent", "buy_stock", {"symbol": "GOOGL", "quantity": 5, "price": 150.0})
    beyond = file_as(settings, "agent", "buy_stock", {"symbol": "GOOGL", "quantity": 20, "price": 150.0})
    assert status_of(site, covered) == "executed"
    assert status_of(site, beyond) == "pending"


def test_the_grant_form_refuses_a_missing_or_too_long_expiry_and_ones_own_calls_keeping_what_was_typed(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    before = len(grants_of(load_settings(site.env)))
    fields = {"tool": "buy_stock", "requester": "agent", "when": "symbol = 'KEPT'", "uses": "3"}

    with server.signed_in(site.tokens["alice"]) as alice:
        csrf = csrf_of(alice.get("/grants/new").text)
        no_expiry = alice.post("/grants", data={**fields, "csrf": csrf, "expires": ""})
        too_long = alice.post("/grants", data={**fields, "csrf": csrf, "expires": "8d"})
        own = alice.post("/grants", data={**fields, "csrf": csrf, "expires": "1h", "requester": "Alice"})
        no_csrf = alice.post("/grants", data={**fields, "expires": "1h"})

    assert no_expiry.status_code == 400 and "expires: a grant must expire" in no_expiry.text
    assert "at most 7d" in no_expiry.text
    assert too_long.status_code == 400
    assert "expires: 8d is above the cap of 7d ([grants] max_seconds = 604800)" in too_long.text
    assert "symbol = &#39;KEPT&#39;</textarea>" in too_long.text and 'name="uses" value="3"' in too_long.text
    assert own.status_code == 403 and "the requester can never grant its own calls" in own.text
    assert no_csrf.status_code == 403
    assert len(grants_of(load_settings(site.env))) == before


def test_a_grant_revoked_in_the_inbox_covers_the_next_call_no_more(served: tuple[Site, Served]) -> None:
    site, server = served
    settings = load_settings(site.env)

    async def grant() -> Grant:
        async with open_gate(settings) as gate:
            return await gate.add_grant(
                "delete_database_records",
                "agent",
                None,
                True,
                timedelta(hours=1),
                None,
                "<b>cleanup</b> window",
                "carol",
            )

    made = anyio.run(grant)
    nothing = {"table": "users", "condition": "age > 200"}
    covered = file_as(settings, "agent", "delete_database_records", nothing)

    with server.signed_in(site.tokens["carol"]) as carol:
        listed = carol.get("/grants").text
        forged = carol.post(f"/grants/{made.id}/revoke", data={})
        still = carol.get("/grants").text
        revoked = carol.post(f"/grants/{made.id}/revoke", data={"csrf": csrf_of(listed)})
        live_only = carol.get("/grants").text
        everything = carol.get("/grants", params={"all": "1"}).text

    assert status_of(site, covered) == "executed"
    assert "&lt;b&gt;cleanup&lt;/b&gt; window" in listed and "<b>cleanup" not in listed
    assert "with <em>any arguments</em>" in listed
    assert forged.status_code == 403 and 'class="grant-active"' in still
    assert revoked.status_code == 303
    assert made.id not in live_only
    assert re.search(rf'id="grant-{made.id}"[^>]*class="grant-revoked"', everything)
    assert "revoked by carol" in everything
    after = file_as(
        settings, "agent", "delete_database_records", {"table": "users", "condition": "age > 300"}
    )
    assert status_of(site, after) == "pending"

"""Grants end to end through the faces: `/api/v1/grants` on a real server, `hitl grants` on a store and
through that server, and MCP, where no tool makes a grant."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hitl_mcp.config import Settings
from tests.cli_in_process import hitl
from tests.inbox import Served, Site, make_site, serve
from tests.test_auth import connect
from tests.test_cli import file_request
from tests.test_server import ok, text

GOOGL = {"symbol": "GOOGL", "quantity": 5, "price": 150.0}
SCOPE = "symbol = 'GOOGL' AND quantity <= 10"
ANY_EMAIL = ("grants", "add", "send_email", "--requester", "agent", "--any-arguments")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("grants"), tokens=True)


@pytest.fixture(scope="module")
def server(site: Site) -> Any:
    with serve(site) as served:
        yield served


def grants_in(folder: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(folder / "hitl.db") as conn:
        return [(str(a), str(b)) for a, b in conn.execute("SELECT id, state FROM grants")]


async def test_rest_makes_a_grant_that_waits_on_levels_covers_calls_and_is_revoked(
    server: Served, site: Site
) -> None:
    body = {"tool": "buy_stock", "requester": "agent", "when": SCOPE, "expires": "2h", "uses": 5}
    with server.api(site.tokens["alice"]) as alice, server.api(site.tokens["bob"]) as bob:
        made = alice.post("/api/v1/grants", json=body)
        assert made.status_code == 201, made.text
        grant = made.json()
        # buy_stock's last rule needs a trader and then a risk manager: the grant waits for bob.
        assert grant["status"] == "waiting"
        assert grant["levels_needed"] == ["rule 2: level 2 of 2, 1 × risk_manager"]

        async with connect(server.mcp, site.tokens["agent"]) as agent:
            before = ok(await agent.call_tool("buy_stock", GOOGL))
            approved = bob.post(f"/api/v1/grants/{grant['id']}/approve")
            assert approved.status_code == 200 and approved.json()["status"] == "active"
            covered = ok(await agent.call_tool("buy_stock", GOOGL))
            other = ok(await agent.call_tool("buy_stock", GOOGL | {"symbol": "MSFT"}))

            record = alice.get(f"/api/v1/requests/{covered['request_id']}").json()
            trail = alice.get(f"/api/v1/requests/{covered['request_id']}/audit").json()
            listed = alice.get("/api/v1/grants").json()["grants"]
            with server.api(site.tokens["carol"]) as carol:
                refused = carol.post(f"/api/v1/grants/{grant['id']}/revoke")
            revoked = alice.post(f"/api/v1/grants/{grant['id']}/revoke")
            after = ok(await agent.call_tool("buy_stock", GOOGL))
        live = alice.get("/api/v1/grants").json()["grants"]
        every = alice.get("/api/v1/grants", params={"all": "true"}).json()["grants"]
        one = alice.get(f"/api/v1/grants/{grant['id']}").json()

    assert before["status"] == "pending"
    assert covered["status"] == "executed"
    assert record["approval"]["policy"]["grant"] == grant["id"]
    assert [event["details"]["grant"] for event in trail if event["event"] == "granted"] == [grant["id"]]
    assert other["status"] == "pending"
    assert [(g["id"], g["uses_made"], g["uses_left"]) for g in listed] == [(grant["id"], 1, 4)]
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert revoked.json()["status"] == "revoked" and revoked.json()["revoked_by"] == "alice"
    assert after["status"] == "pending"
    assert live == [] and [g["status"] for g in every] == ["revoked"] and one["status"] == "revoked"
    assert len([order for order in site.orders() if order[1] == "GOOGL"]) == 1


def test_rest_refuses_the_requester_a_cap_overrun_and_a_caller_without_a_token(
    server: Served, site: Site
) -> None:
    base = {"tool": "buy_stock", "requester": "agent", "when": SCOPE}
    with server.api(site.tokens["agent"]) as agent, server.api(site.tokens["alice"]) as alice:
        own = agent.post("/api/v1/grants", json=base | {"expires": "1h"})
        long = alice.post("/api/v1/grants", json=base | {"expires": "30d"})
        implied = alice.post("/api/v1/grants", json=base | {"when": None, "expires": "1h"})
    with server.api(None) as anonymous:
        nobody = anonymous.post("/api/v1/grants", json=base | {"expires": "1h"})

    assert own.status_code == 403 and "can never grant" in own.json()["detail"]
    assert long.status_code == 400
    assert long.json()["detail"] == (
        "expires: 30d is above the cap of 7d ([grants] max_seconds = 604800); nothing was granted"
    )
    assert implied.status_code == 400 and "--any-arguments" in implied.json()["detail"]
    assert nobody.status_code == 401


async def test_agents_cannot_create_grants_over_mcp(server: Served, site: Site) -> None:
    before = grants_in(site.folder)
    async with connect(server.mcp, site.tokens["agent"]) as agent:
        tools = [tool.name for tool in (await agent.list_tools()).tools]
        tried = [
            await agent.call_tool(name, {"tool": "buy_stock", "requester": "agent", "expires": "1h"})
            for name in ("add_grant", "grants_add", "grant")
        ]

    assert not [name for name in tools if "grant" in name]
    assert all(result.is_error for result in tried), [text(result) for result in tried]
    assert grants_in(site.folder) == before


def test_the_cli_through_the_server_acts_as_the_token(server: Served, site: Site, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HITL_SERVER": server.base}
    alice = env | {"HITL_TOKEN": site.tokens["alice"]}
    made = hitl(
        alice,
        "grants",
        "add",
        "buy_stock",
        "--requester",
        "agent",
        "--when",
        SCOPE,
        "--expires",
        "1h",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    grant = json.loads(made.stdout)
    approved = hitl(env | {"HITL_TOKEN": site.tokens["bob"]}, "grants", "approve", grant["id"], "--json")
    listed = hitl(alice, "grants", "list", "--json")
    as_someone = hitl(alice, "grants", "revoke", grant["id"], "--as", "bob")
    revoked = hitl(alice, "grants", "revoke", grant["id"])

    assert grant["created_by"] == "alice" and grant["status"] == "waiting"
    assert json.loads(approved.stdout)["approved_by"] == ["alice", "bob"]
    assert grant["id"] in [g["id"] for g in json.loads(listed.stdout)["grants"]]
    assert as_someone.returncode == 2 and "--as" in as_someone.stderr
    assert revoked.returncode == 0 and "(revoked)" in revoked.stdout


def test_the_cli_on_a_store_adds_lists_and_revokes(env: dict[str, str], settings: Settings) -> None:
    made = hitl(
        env,
        *ANY_EMAIL,
        "--expires",
        "1h",
        "--uses",
        "3",
        "--reason",
        "the weekly digest",
        "--as",
        "carol",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    grant = json.loads(made.stdout)
    request_id = file_request(
        settings, "send_email", {"to": "pat@partner.org", "subject": "Hi", "body": "Hello"}
    )
    table = hitl(env, "grants", "list")
    shown = hitl(env, "show", request_id, "--json")
    revoked = hitl(env, "grants", "revoke", grant["id"], "--as", "carol")
    live = hitl(env, "grants", "list", "--json")
    every = hitl(env, "grants", "list", "--all", "--json")
    trail = hitl(env, "audit", "export", "--request", grant["id"])

    assert grant["status"] == "active" and grant["reason"] == "the weekly digest"
    assert json.loads(shown.stdout)["status"] == "executed"
    assert json.loads(shown.stdout)["approval"]["policy"]["grant"] == grant["id"]
    assert grant["id"] in table.stdout and "1/3" in table.stdout and "any arguments" in table.stdout
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert json.loads(live.stdout) == {"grants": []}
    assert [g["status"] for g in json.loads(every.stdout)["grants"]] == ["revoked"]
    records = [json.loads(line) for line in trail.stdout.splitlines()]
    assert [(r["event"], r["actor"]) for r in records] == [
        ("grant-created", "carol"),
        ("grant-revoked", "carol"),
    ]


def test_the_cli_refuses_in_one_line(env: dict[str, str]) -> None:
    add = ("grants", "add", "send_email", "--requester", "agent")
    too_long = hitl(env, *add, "--any-arguments", "--expires", "8d", "--as", "carol")
    no_scope = hitl(env, *add, "--expires", "1h", "--as", "carol")
    itself = hitl(env, *add, "--any-arguments", "--expires", "1h", "--as", "agent")
    unknown = hitl(env, "grants", "revoke", "g0123456789abcdef", "--as", "carol")
    never = hitl(env, *add, "--any-arguments", "--expires", "never", "--as", "carol")

    assert (too_long.returncode, too_long.stderr) == (
        2,
        "hitl: expires: 8d is above the cap of 7d ([grants] max_seconds = 604800); nothing was granted\n",
    )
    assert no_scope.returncode == 2 and "--any-arguments" in no_scope.stderr
    assert itself.returncode == 5 and "can never grant" in itself.stderr
    assert unknown.returncode == 3 and "no grant has id" in unknown.stderr
    assert never.returncode == 2 and "a grant must expire" in never.stderr
    for result in (too_long, no_scope, itself, unknown, never):
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert json.loads(hitl(env, "grants", "list", "--all", "--json").stdout) == {"grants": []}


def test_a_grant_just_made_shows_the_time_it_has_left_not_a_rounded_down_hour(env: dict[str, str]) -> None:
    made = hitl(env, *ANY_EMAIL, "--expires", "2h", "--as", "carol")
    listed = hitl(env, "grants", "list")

    assert made.returncode == 0, made.stderr
    # Made a moment ago for 2h: 1h 59m left, where a count of whole hours would already say 1h.
    assert "(in 1h 59m)" in made.stdout, made.stdout
    assert "1h 59m" in listed.stdout.splitlines()[1], listed.stdout

"""Tokens kept in the store: `hitl token new/list/revoke` against running `hitl serve --http` processes,
which honour a token the moment it is made and refuse it the moment it is revoked — MCP and REST alike."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult

from tests.cli_in_process import hitl
from tests.inbox import Site, make_site, serve
from tests.test_auth import ACCEPT, INITIALIZE, connect, filed_by
from tests.test_cli import BUY
from tests.test_server import ok, text

SECRET_LINE = re.compile(r"^    (\S+)$", re.MULTILINE)


def made(env: dict[str, str], *args: str) -> str:
    """Run `hitl token new ARGS`: the token it shows once."""
    result = hitl(env, "token", "new", *args)
    assert result.returncode == 0, result.stderr
    [secret] = SECRET_LINE.findall(result.stdout)
    return str(secret)


def initialize(mcp: str, token: str | None) -> int:
    headers = ACCEPT | ({"Authorization": f"Bearer {token}"} if token else {})
    with httpx2.Client(timeout=30) as http:
        return http.post(mcp, json=INITIALIZE, headers=headers).status_code


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path, tokens=False)


@pytest.fixture(params=["sqlite", "postgres"])
def either_site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    made_site = make_site(tmp_path, tokens=False)
    if request.param == "postgres":
        made_site.env["HITL_DB"] = request.getfixturevalue("pg_url")
    return made_site


async def test_a_tokenless_server_requires_tokens_from_the_moment_one_is_made(either_site: Site) -> None:
    site = either_site
    with serve(site) as server:
        # No token anywhere: loopback clients act as agent, request after request.
        assert [initialize(server.mcp, None) for _ in range(3)] == [200, 200, 200]

        secret = made(site.env, "alice", "--name", "alice-bot", "--roles", "trader")

        assert initialize(server.mcp, None) == 401
        assert initialize(server.mcp, "not-a-token") == 401
        async with connect(server.mcp, secret) as client:
            ok(await client.call_tool("buy_stock", BUY))

        # Revoking the only token does not open the server again to anyone on the machine.
        assert hitl(site.env, "token", "revoke", "alice-bot").returncode == 0
        assert initialize(server.mcp, None) == 401


async def test_a_revoked_token_is_refused_at_once_over_mcp_and_rest(site: Site) -> None:
    secret = made(site.env, "bob", "--name", "bobs-cli")
    with serve(site) as server:  # started with a stored token: tokens required from the start
        assert initialize(server.mcp, None) == 401
        with server.api(secret) as api:
            assert api.get("/api/v1/requests").status_code == 200
        async with connect(server.mcp, secret) as client:
            ok(await client.call_tool("buy_stock", BUY))

            revoked = hitl(site.env, "token", "revoke", "bobs-cli")
            assert revoked.returncode == 0 and "revoked bobs-cli" in revoked.stdout, revoked.stderr

            # The session it opened is no longer honoured either: every request is checked anew.
            with pytest.raises(MCPError):
                await client.call_tool("buy_stock", BUY)
        assert initialize(server.mcp, secret) == 401
        with server.api(secret) as api:
            assert api.get("/api/v1/requests").status_code == 401
    assert filed_by(site.folder / "hitl.db") == ["bob"]


def test_list_shows_every_field_but_the_token_and_revoke_names_what_it_ended(site: Site) -> None:
    secret = made(site.env, "carol", "--roles", "engineer,trader", "--expires", "12h")
    listed = hitl(site.env, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["principal"] == "carol" and row["roles"] == ["engineer", "trader"]
    assert row["expires_at"] - row["created_at"] == 12 * 3600 and row["state"] == "live"
    assert row["last_used_at"] is None and row["name"].startswith("carol-")
    table = hitl(site.env, "token", "list")
    assert "NAME" in table.stdout and "LAST USED" in table.stdout and row["name"] in table.stdout
    assert secret not in listed.stdout + table.stdout

    assert hitl(site.env, "token", "revoke", row["id"]).returncode == 0
    again = hitl(site.env, "token", "revoke", row["id"])
    assert again.returncode == 3 and "no live token" in again.stderr
    [after] = json.loads(hitl(site.env, "token", "list", "--json").stdout)
    assert after["state"] == "revoked" and after["revoked_at"] is not None


def test_bad_lifetimes_roles_and_names_are_refused_naming_the_option(site: Site) -> None:
    for args, field in [
        (("dave", "--expires", "3 weeks"), "--expires"),
        (("dave", "--roles", "ok,<b>"), "--roles"),
        (("dave", "--name", "has space"), "name"),
    ]:
        refused = hitl(site.env, "token", "new", *args)
        assert refused.returncode == 2 and refused.stderr.startswith(f"hitl: {field}:"), refused.stderr
    made(site.env, "dave", "--name", "dave-ci", "--expires", "never")
    twice = hitl(site.env, "token", "new", "erin", "--name", "dave-ci")
    assert twice.returncode == 2 and "a token named 'dave-ci' exists" in twice.stderr


async def agent_call(mcp: str, token: str) -> CallToolResult:
    async with connect(mcp, token) as agent:
        return await agent.call_tool("buy_stock", BUY)


async def test_a_stored_tokens_roles_count_when_its_holder_decides(tmp_path: Path) -> None:
    # Neither dan nor erin holds a role in the config; the policy's first level wants a trader. Only dan's
    # token carries the role.
    site = make_site(tmp_path, tokens=True)
    trader = made(site.env, "dan", "--roles", "trader")
    plain = made(site.env, "erin")
    with serve(site) as server:
        async with connect(server.mcp, site.tokens["agent"]) as agent:
            filed = ok(await agent.call_tool("buy_stock", BUY))
        request_id = filed["request_id"]
        async with connect(server.mcp, plain) as erin:
            refused = await erin.call_tool("approve", {"request_id": request_id})
            assert refused.is_error and "trader" in text(refused)
        async with connect(server.mcp, trader) as dan:
            ok(await dan.call_tool("approve", {"request_id": request_id}))  # the trader level is met
            over_rest = ok(await agent_call(server.mcp, site.tokens["agent"]))["request_id"]
        with server.api(plain) as erin_api, server.api(trader) as dan_api:
            path = f"/api/v1/requests/{over_rest}/approve"
            assert erin_api.post(path, json={}).status_code == 403
            assert dan_api.post(path, json={}).status_code == 200

"""`hitl mcp-config --client …`: the entry in each client's own format, and what it prints actually connects —
the Claude Code command line starts a server that lists hitl's tools, and VS Code's HTTP entry, its token
typed in, reaches a team's server."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.test_auth import serving, tokens
from tests.test_cli import HITL

__all__ = ["tokens"]  # the fixture, for this module's tests
TEAM = "https://hitl.example.com"


def printed(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HITL, "mcp-config", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def document(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = printed(env, *args)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_the_claude_code_command_line_starts_a_server_that_lists_hitls_tools(env: dict[str, str]) -> None:
    done = printed(env, "--client", "claude-code")
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout)
    assert words[:6] == ["claude", "mcp", "add", "--transport", "stdio", "hitl"]
    split = words.index("--")
    pairs = [words[i + 1] for i in range(6, split) if words[i] == "--env"]
    server_env = dict(pair.split("=", 1) for pair in pairs)
    assert server_env["HITL_DB"] == env["HITL_DB"] and server_env["HITL_CONFIG"] == env["HITL_CONFIG"]

    async def tool_names() -> set[str]:
        command, *args = words[split + 1 :]
        params = StdioServerParameters(command=command, args=args, env=server_env, cwd="/")
        async with Client(params) as client:
            return {tool.name for tool in (await client.list_tools()).tools}

    assert {"buy_stock", "approve", "wait_for_decision"} <= anyio.run(tool_names)


def test_the_claude_code_command_for_a_team_server_carries_the_token_header(env: dict[str, str]) -> None:
    done = printed(env, "--client", "claude-code", "--http", "--server", TEAM + "/")
    assert shlex.split(done.stdout) == [
        *("claude", "mcp", "add", "--transport", "http", "hitl", f"{TEAM}/mcp"),
        *("--header", "Authorization: Bearer TOKEN"),
    ]


def test_vscodes_entry_asks_for_the_token_and_reaches_the_server_with_it(
    env: dict[str, str], tokens: dict[str, str], tmp_path: Path
) -> None:
    with serving(env, tmp_path / "server.log") as url:
        base = url.removesuffix("/mcp")
        vscode = document(env, "--client", "vscode", "--http", "--server", base)
        server = vscode["servers"]["hitl"]
        assert server["type"] == "http" and server["url"] == url
        (prompt,) = vscode["inputs"]
        assert prompt["password"] is True and prompt["type"] == "promptString"
        # What VS Code does with the entry: the person types the token, VS Code substitutes it.
        header = server["headers"]["Authorization"].replace(f"${{input:{prompt['id']}}}", tokens["agent"])

        async def tool_names() -> set[str]:
            async with (
                httpx2.AsyncClient(headers={"Authorization": header}) as http,
                Client(streamable_http_client(server["url"], http_client=http)) as client,
            ):
                return {tool.name for tool in (await client.list_tools()).tools}

        assert "buy_stock" in anyio.run(tool_names)


def test_cursor_and_claude_desktop_get_a_remote_server_in_their_own_shapes(env: dict[str, str]) -> None:
    cursor = document(env, "--client", "cursor", "--http", "--server", TEAM)
    assert cursor == {
        "mcpServers": {"hitl": {"url": f"{TEAM}/mcp", "headers": {"Authorization": "Bearer TOKEN"}}}
    }
    desktop = document(env, "--client", "claude-desktop", "--http", "--server", TEAM)["mcpServers"]["hitl"]
    assert desktop["command"] == "npx" and f"{TEAM}/mcp" in desktop["args"]
    assert desktop["env"] == {"HITL_AUTHORIZATION": "Bearer TOKEN"}


def test_a_stdio_entry_for_desktop_clients_is_the_generic_one(env: dict[str, str]) -> None:
    assert document(env, "--client", "claude-desktop") == document(env)
    assert document(env, "--client", "cursor") == document(env)


def test_a_server_url_needs_http_and_must_be_a_url(env: dict[str, str]) -> None:
    without_http = printed(env, "--server", TEAM)
    assert without_http.returncode == 2 and "--server names an HTTP server: add --http" in without_http.stderr
    not_a_url = printed(env, "--http", "--server", "hitl.example.com")
    assert not_a_url.returncode == 2 and "is not a server URL" in not_a_url.stderr
    clear = printed(env, "--http", "--server", "http://hitl.example.com")
    assert clear.returncode == 0 and "clear text" in clear.stderr

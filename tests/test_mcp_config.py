"""`hitl mcp-config`: the entry it prints starts, as is, the server the README promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from tests.test_cli import HITL
from tests.test_gateway import until_listed

UPSTREAM = Path(__file__).with_name("upstream_server.py")


def printed(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HITL, "mcp-config", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def entry_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    entry: dict[str, Any] = json.loads(done.stdout)["mcpServers"]["hitl"]
    return entry


def test_upstreams_go_into_the_entry_as_an_absolute_path_and_the_server_gates_their_tools(
    env: dict[str, str], config_file: Path, tmp_path: Path, counter: Path
) -> None:
    desktop = {
        "mcpServers": {
            "notes": {"command": sys.executable, "args": [str(UPSTREAM), "--counter", str(counter)]}
        }
    }
    (tmp_path / "upstreams.json").write_text(json.dumps(desktop), encoding="utf-8")

    # Relative where it is typed; the client starts the server from a folder of its own.
    entry = entry_of(printed(env, "--upstreams", "upstreams.json", cwd=tmp_path))

    assert entry["args"] == ["serve", "--upstreams", str(tmp_path / "upstreams.json")]
    assert entry["env"]["HITL_CONFIG"] == str(config_file)

    async def tools() -> dict[str, str]:
        params = StdioServerParameters(
            command=entry["command"], args=entry["args"], env=entry["env"], cwd="/"
        )
        async with Client(params) as client:
            await until_listed(client, "notes__write_note")
            return {tool.name: tool.description or "" for tool in (await client.list_tools()).tools}

    listed = anyio.run(tools)
    # Not annotated as read-only: gated (fail closed), beside the built-in actions.
    assert listed["notes__write_note"].startswith("Files a request for human approval")
    assert "buy_stock" in listed


def test_a_bad_upstreams_file_is_refused_now_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "upstreams.json").write_text('{"mcpServers": {"old": {"type": "sse", "url": "http://x/"}}}')

    done = printed(env, "--upstreams", "upstreams.json", cwd=tmp_path)

    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "mcpServers.old.type" in line


def test_the_entry_always_carries_hitl_config_even_when_it_is_unset(
    env: dict[str, str], tmp_path: Path
) -> None:
    unset = {name: value for name, value in env.items() if name != "HITL_CONFIG"}

    done = printed(unset, cwd=tmp_path)

    entry = entry_of(done)
    assert entry["env"]["HITL_CONFIG"] == ""
    assert set(entry["env"]) == {"HITL_CONFIG", "HITL_DB", "HITL_PRINCIPAL"}
    assert "HITL_CONFIG is not set" in done.stderr


def test_upstreams_belong_to_a_stdio_entry(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "upstreams.json").write_text('{"mcpServers": {}}')

    done = printed(env, "--http", "--upstreams", "upstreams.json", cwd=tmp_path)

    assert done.returncode == 2 and "hitl serve --http --upstreams FILE" in done.stderr

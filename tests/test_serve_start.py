"""`hitl serve` starts fast: a plain stdio server (SQLite, no upstreams, no metrics, tracing or notifiers)
loads the MCP SDK, the gate and its store, and none of the faces, drivers and clients it has no use for; the
garbage collector it pauses while starting is on again whatever happens."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mcp import Client, StdioServerParameters

from hitl_mcp.cli.app import main

# Serve as the `hitl` script does; once the client has gone, say which modules the process had loaded.
SERVE_AND_REPORT = """\
import json, sys
from hitl_mcp.cli import main
try:
    main(["serve"])
except SystemExit as done:
    code = done.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""

# What a plain stdio server never needs. The SDK itself loads starlette, uvicorn and OpenTelemetry's API
# in every server (a minimal MCPServer does too), so those are not hitl's to leave out.
UNUSED_PACKAGES = {"prometheus_client", "asyncpg", "authlib", "aiosmtplib", "jinja2", "slack_sdk"}
UNUSED_MODULES = (
    "opentelemetry.sdk",  # tracing exports nothing until the operator installs a provider
    "hitl_mcp.web",  # the inbox, REST and sign-in faces: HTTP only
    "hitl_mcp.gateway",  # the upstreams' tools: only with [upstreams]
    "hitl_mcp.upstream.supervisor",
    "hitl_mcp.store.postgres",  # the store here is SQLite
    "hitl_mcp.notify.worker",  # the delivery worker and its channels: only with [[notify]]
    "hitl_mcp.notify.slack_api",
    "hitl_mcp.notify.ntfy",
    "hitl_mcp.notify.approver_mail",
)


def unused(name: str) -> bool:
    return name.split(".")[0] in UNUSED_PACKAGES or any(
        name == module or name.startswith(f"{module}.") for module in UNUSED_MODULES
    )


async def test_a_plain_stdio_server_answers_without_loading_faces_and_clients_it_does_not_use(
    env: dict[str, str], tmp_path: Path
) -> None:
    report = tmp_path / "modules.json"
    serve = [sys.executable, "-c", SERVE_AND_REPORT, str(report)]

    # The client waits for the server to exit (it closes stdin), and the server writes its report as it does.
    async with Client(StdioServerParameters(command=serve[0], args=serve[1:], env=env)) as client:
        tools = await client.list_tools()

    assert {"buy_stock", "send_email", "approve"} <= {tool.name for tool in tools.tools}
    loaded = json.loads(report.read_text())
    assert loaded["code"] == 0
    assert [name for name in loaded["modules"] if unused(name)] == []


def test_a_refused_serve_leaves_the_garbage_collector_on(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, " * 100)
    for name, value in {**env, "HITL_DB": str(garbage)}.items():
        monkeypatch.setenv(name, value)
    assert gc.isenabled()

    refused = CliRunner().invoke(main, ["serve"])

    assert refused.exit_code == 2, refused.output
    assert "is not a hitl store" in refused.output
    assert gc.isenabled()

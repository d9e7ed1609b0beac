"""Notable events as MCP log messages: older clients ask with logging/setLevel and hear of every change
(from any process) at that level and above; 2026-07-28 clients opt in per request."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import anyio
import pytest
from mcp import Client
from mcp_types import LoggingMessageNotificationParams

from hitl_mcp.config import Settings
from hitl_mcp.server import build_server
from tests.test_cli import BUY, HITL
from tests.test_server import ok

Heard = list[LoggingMessageNotificationParams]
# The logging capability is deprecated as of 2026-07-28; these tests use it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


def collector(heard: Heard) -> Callable[[LoggingMessageNotificationParams], object]:
    async def collect(params: LoggingMessageNotificationParams) -> None:
        heard.append(params)

    return collect


async def until(heard: Heard, wanted: Callable[[Heard], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not wanted(heard):  # noqa: ASYNC110 -- messages arrive through the client's callback
            await anyio.sleep(0.01)


def events(heard: Heard) -> list[str]:
    return [message.data["event"] for message in heard if isinstance(message.data, dict)]


async def test_an_older_client_hears_what_another_process_decided_at_its_level(
    settings: Settings, env: dict[str, str]
) -> None:
    info: Heard = []
    errors_only: Heard = []
    app = build_server(settings, principal="agent")
    async with (
        Client(app, mode="legacy", logging_callback=collector(info)) as agent,  # type: ignore[arg-type]
        Client(app, mode="legacy", logging_callback=collector(errors_only)) as quiet,  # type: ignore[arg-type]
    ):
        assert (await agent.set_logging_level("info")).model_dump(exclude_none=True) in ({}, {"meta": None})
        await quiet.set_logging_level("error")
        filed = ok(await agent.call_tool("buy_stock", BUY))

        await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [HITL, "approve", filed["request_id"], "--as", "alice", "--yes"], env=env, check=True
            )
        )
        await until(info, lambda heard: "executed" in events(heard))

    assert events(info)[:1] == ["filed"] and "approved" in events(info)
    assert "claimed" not in events(info)  # debug, below the level asked for
    executed = next(m for m in info if isinstance(m.data, dict) and m.data["event"] == "executed")
    assert executed.level == "info" and executed.data["request_id"] == filed["request_id"]
    assert executed.data["status"] == "executed" and executed.logger == "hitl"
    assert errors_only == []


async def test_a_current_client_hears_of_its_own_call_only_when_it_opts_in(settings: Settings) -> None:
    opted: Heard = []
    silent: Heard = []
    app = build_server(settings, principal="agent")
    async with (
        Client(app, logging_callback=collector(opted), log_level="info") as agent,  # type: ignore[arg-type]
        Client(app, logging_callback=collector(silent)) as other,  # type: ignore[arg-type]
    ):
        filed = ok(await agent.call_tool("buy_stock", BUY))
        ok(await other.call_tool("buy_stock", {**BUY, "quantity": 3}))

    assert [(m.level, m.data) for m in opted] == [
        ("info", {"request_id": filed["request_id"], "tool": "buy_stock", "status": "pending"})
    ]
    assert silent == []


async def test_a_current_client_hears_only_from_the_level_it_asked_for(settings: Settings) -> None:
    notices: Heard = []
    app = build_server(settings, principal="alice")
    async with (
        Client(build_server(settings, principal="agent")) as agent,
        Client(app, logging_callback=collector(notices), log_level="notice") as alice,  # type: ignore[arg-type]
    ):
        first = ok(await agent.call_tool("buy_stock", BUY))
        second = ok(await agent.call_tool("buy_stock", {**BUY, "quantity": 3}))
        # A wait that ends with the request still pending reports it at info: below what alice asked for.
        waited = {"request_id": first["request_id"], "timeout_seconds": 0}
        assert ok(await alice.call_tool("wait_for_decision", waited))["status"] == "pending"
        ok(await alice.call_tool("reject", {"request_id": second["request_id"], "reason": "no"}))

    assert [(m.level, m.data) for m in notices] == [
        ("notice", {"request_id": second["request_id"], "tool": "buy_stock", "status": "rejected"})
    ]

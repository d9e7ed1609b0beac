"""The MCP SDK's insides that hitl relies on (all behind `hitl_mcp.sdk_seams`) still have the shape relied
on, and each seam still does its job against a real in-process server.

After an SDK upgrade, a failure here names the internal and the seam to change. The rest of the suite would
fail too, but far from the cause (a missing log message, a tool that never appears)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import pytest
from mcp import Client
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, Extension, MCPServer, MethodBinding
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.session import ServerSession
from mcp_types import (
    EmptyResult,
    GetTaskRequest,
    GetTaskRequestParams,
    Result,
    ServerTasksCapability,
    SetLevelRequestParams,
    TasksListCapability,
)
from pydantic import ConfigDict

from hitl_mcp import sdk_seams
from hitl_mcp.sdk_seams import (
    add_handshake_era_handler,
    add_legacy_request_handler,
    announce_tools_changing,
    connection_of,
    declare_handshake_tasks,
    lifespan_state,
    put_tool,
    registered_tool,
    registered_tools,
)

SDK = version("mcp")
# The logging capability is deprecated as of 2026-07-28; the seam serves it to older clients on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


def moved(internal: str, seam: str) -> str:
    return (
        f"mcp {SDK}: {internal} is gone or changed shape; adapt hitl_mcp.sdk_seams.{seam} to what this SDK "
        "offers (docs/ARCHITECTURE.md, 'What we take from the SDK's insides, and why')"
    )


def parameters(function: Callable[..., Any]) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def private(owner: object, name: str, seam: str) -> Any:
    found = getattr(owner, name, None)
    assert found is not None, moved(f"{type(owner).__name__}.{name}", seam)
    return found


def test_the_low_level_server_takes_handlers_and_builds_the_handshake() -> None:
    lowlevel = private(MCPServer("surface"), "_lowlevel_server", "add_legacy_request_handler")
    assert parameters(lowlevel.add_request_handler)[:3] == ["method", "params_type", "handler"], moved(
        "Server.add_request_handler(method, params_type, handler)", "add_legacy_request_handler"
    )
    assert parameters(lowlevel.create_initialization_options)[:1] == ["notification_options"], moved(
        "Server.create_initialization_options(notification_options, …)", "announce_tools_changing"
    )


def test_the_tool_manager_holds_tools_by_name() -> None:
    app: MCPServer[Any] = MCPServer("surface")
    manager = private(app, "_tool_manager", "registered_tool")
    app.add_tool(lambda: "pong", name="ping")
    assert callable(getattr(manager, "get_tool", None)), moved("ToolManager.get_tool", "registered_tool")
    assert callable(getattr(manager, "list_tools", None)), moved("ToolManager.list_tools", "registered_tools")
    tools = private(manager, "_tools", "put_tool")
    assert isinstance(tools, dict) and isinstance(tools.get("ping"), Tool), moved(
        "ToolManager._tools (a dict of Tool by name)", "put_tool"
    )


def test_a_session_keeps_its_connection() -> None:
    assert "connection" in parameters(ServerSession.__init__), moved(
        "ServerSession(…, connection)", "connection_of"
    )


def test_the_stream_protocols_match_the_sdks() -> None:
    """Ours are copies by shape of the SDK's private ones; mypy checks them against `mcp.client.Transport`,
    and this says which to update when the SDK's change."""
    try:
        theirs = importlib.import_module("mcp.shared._stream_protocols")
    except ImportError:
        pytest.fail(moved("mcp.shared._stream_protocols", "ReadStream/WriteStream"))
    for name in ("ReadStream", "WriteStream"):
        sdk, ours = getattr(theirs, name, None), getattr(sdk_seams, name)
        assert sdk is not None, moved(f"mcp.shared._stream_protocols.{name}", name)

        def shape(protocol: type) -> dict[str, list[str]]:
            return {
                member: parameters(getattr(protocol, member))
                for member in vars(protocol)
                if callable(vars(protocol)[member]) and not member.startswith("_abc")
                if member not in ("__init__", "__subclasshook__", "__class_getitem__", "_proto_hook")
            }

        assert shape(sdk) == shape(ours), moved(f"the methods of {name}", name)


async def test_a_legacy_request_handler_is_served_on_the_handshake_protocol() -> None:
    app: MCPServer[Any] = MCPServer("surface")
    levels: list[str] = []
    connections: list[Connection] = []

    async def set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        levels.append(params.level)
        connections.append(connection_of(ctx.session))
        return EmptyResult()

    add_legacy_request_handler(app, "logging/setLevel", SetLevelRequestParams, set_level)
    async with Client(app, mode="legacy") as client:
        assert client.server_capabilities.logging is not None  # declared because the method is served
        await client.set_logging_level("warning")
    assert levels == ["warning"]
    assert isinstance(connections[0], Connection), moved("ServerSession._connection", "connection_of")


async def test_older_clients_hear_that_tools_change_only_once_announced() -> None:
    quiet: MCPServer[Any] = MCPServer("surface")
    async with Client(quiet, mode="legacy") as client:
        tools = client.server_capabilities.tools
        assert tools is None or not tools.list_changed
    announced: MCPServer[Any] = MCPServer("surface")
    announced.add_tool(lambda: "pong", name="ping")
    announce_tools_changing(announced)
    async with Client(announced, mode="legacy") as client:
        tools = client.server_capabilities.tools
        assert tools is not None and tools.list_changed, moved(
            "the handshake's use of Server.create_initialization_options", "announce_tools_changing"
        )


async def test_a_put_tool_is_listed_called_and_replaced() -> None:
    app: MCPServer[Any] = MCPServer("surface")

    def first() -> str:
        return "first"

    def second() -> str:
        return "second"

    put_tool(app, Tool.from_function(first, name="echo"))
    assert registered_tool(app, "echo") is not None
    async with Client(app) as client:
        assert [tool.name for tool in (await client.list_tools()).tools] == ["echo"]
        assert (await client.call_tool("echo", {})).structured_content == {"result": "first"}
    put_tool(app, Tool.from_function(second, name="echo"))
    assert [tool.name for tool in registered_tools(app)] == ["echo"]
    async with Client(app) as client:
        assert (await client.call_tool("echo", {})).structured_content == {"result": "second"}
    app.remove_tool("echo")
    assert registered_tool(app, "echo") is None


async def test_the_lifespan_state_is_readable_while_http_serves() -> None:
    served = object()

    @asynccontextmanager
    async def lifespan(_: MCPServer[object]) -> AsyncIterator[object]:
        yield served

    app: MCPServer[object] = MCPServer("surface", lifespan=lifespan)
    app.streamable_http_app()
    assert lifespan_state(app) is None
    async with app.session_manager.run():
        assert lifespan_state(app) is served, moved(
            "StreamableHTTPSessionManager._lifespan_state", "lifespan_state"
        )
    assert lifespan_state(app) is None


async def test_a_tool_sees_its_connection_through_the_seam() -> None:
    app: MCPServer[Any] = MCPServer("surface")

    async def which(ctx: Context[Any, Any]) -> str:
        return type(connection_of(ctx.request_context.session)).__name__

    app.add_tool(which, name="which")
    async with Client(app, mode="legacy") as client:
        result = await client.call_tool("which", {})
    assert result.structured_content == {"result": "Connection"}, moved(
        "ServerSession._connection", "connection_of"
    )


async def test_a_handshake_era_handler_leaves_the_newer_generation_its_own() -> None:
    """`tasks/get` is one name in both generations: the 2025-11-25 form for older clients, an extension's
    binding for 2026-07-28 ones."""

    async def newer(ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> dict[str, Any]:
        return {"served": "extension", "taskId": params.task_id}

    async def older(ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> dict[str, Any]:
        return {"served": "handshake era", "taskId": params.task_id}

    class Tasks(Extension):
        identifier = "io.hitl.test/tasks"

        def methods(self) -> Sequence[MethodBinding]:
            return [MethodBinding(method="tasks/get", params_type=GetTaskRequestParams, handler=newer)]

    app: MCPServer[Any] = MCPServer("surface", extensions=[Tasks()])
    add_handshake_era_handler(app, "tasks/get", GetTaskRequestParams, older)
    declare_handshake_tasks(app, ServerTasksCapability(list=TasksListCapability()))
    request = GetTaskRequest(params=GetTaskRequestParams(task_id="t1"))
    async with Client(app, mode="legacy") as client:
        answer = await client.session.send_request(request, Echoed)
        assert answer.model_dump() == {"meta": None, "served": "handshake era", "taskId": "t1"}, moved(
            "Server.get_request_handler / HandlerEntry(params_type, handler)", "add_handshake_era_handler"
        )
        tasks = client.server_capabilities.tasks
        assert tasks is not None and tasks.list is not None, moved(
            "the handshake's use of Server.create_initialization_options", "declare_handshake_tasks"
        )
    async with Client(app, mode="2026-07-28") as client:
        answer = await client.session.send_request(request, Echoed)
        assert answer.model_dump()["served"] == "extension"


class Echoed(Result):
    model_config = ConfigDict(extra="allow")


def test_the_low_level_server_runs_on_given_streams_and_stamps_its_info() -> None:
    lowlevel = private(MCPServer("surface"), "_lowlevel_server", "serve_streams")
    assert parameters(lowlevel.run)[:3] == ["read_stream", "write_stream", "initialization_options"], moved(
        "Server.run(read_stream, write_stream, initialization_options)", "serve_streams"
    )
    stamp = private(lowlevel, "server_info_stamp", "server_info_stamp")
    assert isinstance(stamp, dict) and stamp.get("name") == "surface", moved(
        "Server.server_info_stamp (a dict naming the server)", "server_info_stamp"
    )


async def test_streams_of_our_own_are_served_as_stdio_is() -> None:
    import anyio
    from mcp.client.session import ClientSession
    from mcp.shared.message import SessionMessage

    app: MCPServer[Any] = MCPServer("surface")

    @app.tool()
    def ping() -> str:
        return "pong"

    to_server, server_reads = anyio.create_memory_object_stream[SessionMessage | Exception](1)
    server_writes, from_server = anyio.create_memory_object_stream[SessionMessage](1)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sdk_seams.serve_streams, app, server_reads, server_writes)
        async with ClientSession(from_server, to_server) as client:
            await client.initialize()
            result = await client.call_tool("ping", {})
        tasks.cancel_scope.cancel()
    assert result.content[0].model_dump()["text"] == "pong"
    assert sdk_seams.server_info_stamp(app)["name"] == "surface"

"""The one place hitl reaches into the MCP SDK's private attributes (`mcp` 2.3).

Each accessor exists because the SDK offers no public API that does the job; its docstring says which job
and why the public surface falls short. Everything else in hitl uses the SDK's public names only.
`tests/test_sdk_surface.py` checks that every internal used here still has the shape relied on, so an SDK
release that moves one fails there, by name, rather than deep inside another test.

The stream protocols below are our own copies of the SDK's (`mcp.shared._stream_protocols`, a private
module): protocols match by shape, so mypy checks ours against what `mcp.client.Transport` expects."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from mcp.shared.message import SessionMessage
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from mcp.server.connection import Connection
    from mcp.server.context import ServerRequestContext
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.tools.base import Tool
    from mcp.server.models import InitializationOptions
    from mcp.server.session import ServerSession
    from mcp_types import ServerTasksCapability

    RequestHandler = Callable[[ServerRequestContext[Any, Any], Any], Awaitable[Any]]

T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)


class ReadStream(Protocol[T_co]):
    """What a transport reads from (the SDK's `ReadStream`, by shape)."""

    async def receive(self) -> T_co: ...
    async def aclose(self) -> None: ...
    def __aiter__(self) -> ReadStream[T_co]: ...
    async def __anext__(self) -> T_co: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None: ...


class WriteStream(Protocol[T_contra]):
    """What a transport writes to (the SDK's `WriteStream`, by shape)."""

    async def send(self, item: T_contra, /) -> None: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None: ...


# What a client transport's `__aenter__` yields (the SDK's `TransportStreams`, which is private).
TransportStreams = tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]


def add_legacy_request_handler(
    app: MCPServer[Any], method: str, params_type: type[BaseModel], handler: RequestHandler
) -> None:
    """Serve a spec method of the handshake era (`logging/setLevel`, `resources/subscribe`, …) that
    MCPServer does not serve itself.

    `MethodBinding` refuses spec methods by design and the SDK's docs point to the low-level server's
    `add_request_handler` for exactly this; MCPServer keeps that server in `_lowlevel_server`."""
    app._lowlevel_server.add_request_handler(method, params_type, handler)


def add_handshake_era_handler(
    app: MCPServer[Any], method: str, params_type: type[BaseModel], handler: RequestHandler
) -> None:
    """Serve `method` to clients of the handshake era only (the experimental tasks of 2025-11-25), leaving
    a handler already registered under the same name (a 2026-07-28 extension's `MethodBinding`:
    `tasks/get`, `tasks/cancel`) to the newer generation; without one, newer clients are told the method
    is not found.

    The low-level server keys handlers by method alone, so one name served differently per protocol
    generation needs one handler that routes; it validates the raw params against the chosen handler's
    own type. As for `add_legacy_request_handler`, MCPServer keeps that server in `_lowlevel_server`."""
    from mcp.shared.exceptions import MCPError
    from mcp_types import METHOD_NOT_FOUND, RequestParams
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    lowlevel = app._lowlevel_server
    newer = lowlevel.get_request_handler(method)

    async def by_generation(ctx: ServerRequestContext[Any, Any], _: Any) -> Any:
        raw = dict(ctx.params or {})
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return await handler(ctx, params_type.model_validate(raw, by_name=False))
        if newer is None:
            raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=method)
        return await newer.handler(ctx, newer.params_type.model_validate(raw, by_name=False))

    lowlevel.add_request_handler(method, RequestParams, by_generation)


def declare_handshake_tasks(app: MCPServer[Any], tasks: ServerTasksCapability) -> None:
    """Make the handshake of older clients declare the `tasks` capability (2025-11-25, experimental).

    The handshake's capabilities come from the low-level server's `create_initialization_options`, which
    derives them from registered handlers and has no `tasks` (the SDK has no tasks runtime); MCPServer
    offers no setting for it. Wrapped as `announce_tools_changing` wraps it; the two compose."""
    lowlevel = app._lowlevel_server
    announced = lowlevel.create_initialization_options

    def with_tasks(*args: Any, **kwargs: Any) -> InitializationOptions:
        options = announced(*args, **kwargs)
        options.capabilities = options.capabilities.model_copy(update={"tasks": tasks})
        return options

    lowlevel.create_initialization_options = with_tasks  # type: ignore[method-assign]


def announce_tools_changing(app: MCPServer[Any]) -> None:
    """Make the handshake of older clients declare `tools.listChanged`: the gateway's tools come and go.

    The flag is derived from `NotificationOptions` passed to the low-level server's
    `create_initialization_options`, which MCPServer calls with none and offers no setting for (the SDK
    marks the capabilities API as to be rethought). Newer clients learn it from `subscriptions/listen`."""
    from mcp.server.lowlevel.server import NotificationOptions  # the server's import, not the client's

    lowlevel = app._lowlevel_server
    announced = lowlevel.create_initialization_options

    def with_tools_changing(
        notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any
    ) -> InitializationOptions:
        return announced(notification_options or NotificationOptions(tools_changed=True), *args, **kwargs)

    lowlevel.create_initialization_options = with_tools_changing  # type: ignore[method-assign]


def registered_tool(app: MCPServer[Any], name: str) -> Tool | None:
    """The registered tool of that name, with its input schema, synchronously.

    `MCPServer.list_tools` is async and copies every tool; the strict-arguments middleware and the gateway
    need one tool's schema (or the set of names) in synchronous code."""
    return app._tool_manager.get_tool(name)


def registered_tools(app: MCPServer[Any]) -> list[Tool]:
    """Every registered tool object, synchronously (see `registered_tool`); the gateway tells its own
    proxies from hitl's tools by their class, which `MCPServer.list_tools` does not keep."""
    return app._tool_manager.list_tools()


def put_tool(app: MCPServer[Any], tool: Tool) -> None:
    """Register a ready-made tool object, replacing one of the same name without a warning.

    `MCPServer.add_tool` only builds a tool from a function's signature; an upstream's tool keeps the
    upstream's own input schema, so the gateway builds the `Tool` itself. `MCPServer(tools=…)` takes
    ready-made tools, but only at construction, and upstream tools change while serving."""
    app._tool_manager._tools[tool.name] = tool


def lifespan_state(app: MCPServer[Any]) -> object | None:
    """The state the server's lifespan yielded, while the HTTP session manager runs; else None.

    The web face must use the very gate the MCP tools use; the session manager keeps the lifespan's result
    in `_lifespan_state` and 2.3 has no public accessor for it (tools read it from their request context,
    but a web request has none)."""
    return getattr(app.session_manager, "_lifespan_state", None)


def connection_of(session: ServerSession) -> Connection:
    """The connection behind a request's session: it outlives the per-request session object and can
    still send (log messages, tools/list_changed) after the request ends.

    `ServerSession` exposes the connection's properties one by one but not the connection itself."""
    return session._connection


async def serve_streams(
    app: MCPServer[Any],
    read_stream: ReadStream[SessionMessage | Exception],
    write_stream: WriteStream[SessionMessage],
) -> None:
    """Serve one connection over a transport of hitl's own (`hitl_mcp.stdio_server`), as
    `MCPServer.run_stdio_async` serves the SDK's stdio transport: the lifespan, then the dual-era loop.

    MCPServer runs stdio only over the SDK's `stdio_server()`, and offers no public way to serve streams it
    did not make; its low-level server's `run` does exactly that, and MCPServer keeps it in
    `_lowlevel_server`."""
    lowlevel = app._lowlevel_server
    await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def server_info_stamp(app: MCPServer[Any]) -> dict[str, Any]:
    """The `serverInfo` `_meta` stamp the SDK puts on a 2026-07-28 result that carries none (spec #3002):
    an answer hitl writes itself, without the SDK's result pipeline, gets the same one. The low-level
    server computes it (`server_info_stamp`), and MCPServer keeps that server in `_lowlevel_server`."""
    return dict(app._lowlevel_server.server_info_stamp)

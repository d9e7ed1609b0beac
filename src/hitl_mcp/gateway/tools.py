"""hitl's own MCP tools for the upstreams' tools, kept in step as upstreams start, restart and change.

A gated tool keeps the upstream's input schema and annotations and files a request like a built-in
action. A passed tool is forwarded at once and answered with the upstream's result as it is, keeping its
output schema; each pass is one audit record (tool, principal, arguments digest) committed while the call
is on its way, and one more (`pass-outcome`) when the upstream answers with an error or not at all. Both
are registered on the MCP server as tools whose schema is the upstream's own, not one derived from a
Python signature.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
from mcp.server.connection import Connection
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import func_metadata
from mcp.server.subscriptions import SubscriptionBus, ToolsListChanged
from mcp_types import CallToolResult, InputRequiredResult, TextContent
from mcp_types import Tool as ToolInfo
from pydantic import Field

from hitl_mcp.errors import HitlError
from hitl_mcp.gate import Gate
from hitl_mcp.gateway.action import UpstreamCalls, gated_description, upstream_tool
from hitl_mcp.sdk_seams import put_tool, registered_tools
from hitl_mcp.upstream.settings import PreviewCall

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A gated call may answer with a question for the person at the client (`approval = "confirm"`).
Handler = Callable[[dict[str, Any], Context[Any, Any]], Awaitable[CallToolResult | InputRequiredResult]]


async def _no_function() -> None:
    """Stands in for the function a tool is usually built from: a proxy tool's `run` calls its handler."""


_NO_FUNCTION_METADATA = func_metadata(_no_function)


class ProxyTool(Tool):
    """A tool whose schema comes from elsewhere (an upstream) and whose call goes to `handler`."""

    handler: Handler = Field(exclude=True)
    proxied_output_schema: dict[str, Any] | None = Field(default=None, exclude=True)

    @property
    def output_schema(self) -> dict[str, Any] | None:
        return self.proxied_output_schema

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        # Errors read as they do from every other tool: the SDK's prefix, a refusal's own words after it,
        # and nothing of a crash's.
        try:
            return await self.handler(arguments, context)
        except ToolError as error:
            raise ToolError(f"Error executing tool {self.name}: {error}") from error
        except Exception as error:
            raise UnexpectedToolError(f"Error executing tool {self.name}") from error


@dataclass(frozen=True)
class Exposed:
    """One upstream tool as the rules expose it."""

    upstream: str
    tool: ToolInfo
    gated: bool
    why: str
    target: dict[str, str]
    preview_call: PreviewCall | None = None

    @property
    def name(self) -> str:
        return f"{self.upstream}__{self.tool.name}"


class UpstreamView(UpstreamCalls, Protocol):
    def exposed(self) -> Sequence[Exposed]:
        """Every tool of every ready upstream, as the rules expose it."""

    def raw_version(self, upstream: str) -> str | None:
        """The protocol version `call_raw` answers in for `upstream` now; None when it cannot."""

    async def call_raw(self, upstream: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """As `call`, past the SDK's client session; the result in its wire form."""


FileHandler = Callable[
    [str, dict[str, Any], Context[Any, Any]], Awaitable[CallToolResult | InputRequiredResult]
]
PrincipalOf = Callable[[Context[Any, Any]], str]


class GatewayTools:
    """Registers and unregisters hitl's tools for the upstreams' tools; `sync` after every change."""

    def __init__(
        self,
        app: MCPServer[Any],
        view: UpstreamView,
        *,
        file: FileHandler,
        principal_of: PrincipalOf,
        bus: SubscriptionBus,
    ) -> None:
        self.app = app
        self.view = view
        self.file = file
        self.principal_of = principal_of
        self.bus = bus
        self.gate: Gate | None = None
        self.names: set[str] = set()
        self.passed: dict[str, Exposed] = {}
        """hitl's tools that forward at once, by name (what `fast_pass` may answer)."""
        self._signature: dict[str, str] = {}
        # Connections of clients on the older protocol that listed tools: told of changes directly (newer
        # clients hear through subscriptions/listen). Forgotten when a message cannot reach them.
        self.connections: set[Connection] = set()

    def builtin_names(self) -> set[str]:
        return {tool.name for tool in registered_tools(self.app) if not isinstance(tool, ProxyTool)}

    def sync(self, gate: Gate) -> bool:
        """Make the registered tools and the gate's actions match what the upstreams offer now. True when
        the tool listing changed."""
        self.gate = gate
        taken = self.builtin_names()
        wanted: dict[str, Exposed] = {}
        for exposed in self.view.exposed():
            if exposed.name in taken:
                logger.error(
                    "upstream tool %s would hide hitl's own tool of that name; not exposed", exposed.name
                )
                continue
            wanted[exposed.name] = exposed
        signature = {name: _signature(exposed) for name, exposed in wanted.items()}
        if signature == self._signature:
            gate.actions_changed()  # readiness may have moved even when the listing did not
            return False
        actions = gate.actions
        assert isinstance(actions, MutableMapping)
        for name in self.names - set(wanted):
            self.app.remove_tool(name)
            # The action stays: a request filed for it fails clearly at execution instead of waiting.
        for name, exposed in wanted.items():
            if self._signature.get(name) == signature[name]:
                continue
            put_tool(self.app, self._tool(exposed))
            if exposed.gated:
                action_type = upstream_tool(
                    exposed.upstream, exposed.tool, target=exposed.target, preview_call=exposed.preview_call
                )
                actions[name] = action_type(self.view)
        self.names = set(wanted)
        self.passed = {name: exposed for name, exposed in wanted.items() if not exposed.gated}
        self._signature = signature
        gate.actions_changed()
        return True

    async def tell_clients(self) -> None:
        await self.bus.publish(ToolsListChanged())
        for connection in list(self.connections):
            try:
                await connection.send_tool_list_changed()
            except Exception:  # the client went away
                self.connections.discard(connection)

    def _tool(self, exposed: Exposed) -> ProxyTool:
        info = exposed.tool
        handler: Handler
        output_schema: dict[str, Any] | None
        if exposed.gated:

            async def file(
                arguments: dict[str, Any], ctx: Context[Any, Any]
            ) -> CallToolResult | InputRequiredResult:
                return await self.file(exposed.name, arguments, ctx)

            handler, description, output_schema = (
                file,
                gated_description(exposed.upstream, info),
                _filed_schema(),
            )
        else:

            async def forward(arguments: dict[str, Any], ctx: Context[Any, Any]) -> CallToolResult:
                return await self._forward(exposed, arguments, ctx)

            handler, description, output_schema = forward, info.description or "", info.output_schema
        return ProxyTool(
            fn=_no_function,
            name=exposed.name,
            title=info.title,
            description=description,
            parameters=info.input_schema,
            fn_metadata=_NO_FUNCTION_METADATA,
            is_async=True,
            annotations=info.annotations,
            handler=handler,
            proxied_output_schema=output_schema,
        )

    async def _forward(
        self, exposed: Exposed, arguments: dict[str, Any], ctx: Context[Any, Any]
    ) -> CallToolResult:
        principal = self.principal_of(ctx)  # before anything is forwarded: no call without a principal
        self.check_passes(exposed)
        return await self.pass_through(exposed, arguments, principal, partial(self._call, exposed, arguments))

    def check_passes(self, exposed: Exposed) -> None:
        upstream, tool = exposed.upstream, exposed.tool.name
        if self.view.live(upstream, tool) and not self.view.passes(upstream, tool):
            # Re-listed as gated a moment ago, before this tool was registered again as a gated one.
            raise ToolError(
                f"{exposed.name} is gated now (its upstream changed it); call it again to file a request. "
                "Nothing was sent."
            )

    async def pass_through(
        self,
        exposed: Exposed,
        arguments: dict[str, Any],
        principal: str,
        call: Callable[[], Awaitable[tuple[T, str | None]]],
    ) -> T:
        """`call` the upstream and write the pass's audit record at the same time: the answer waits for the
        longer of the two, not their sum, and never comes without its record."""
        gate = self.gate
        assert gate is not None
        pass_id: str | None = None
        unrecorded: HitlError | None = None

        async def record() -> None:
            nonlocal pass_id, unrecorded
            try:
                pass_id = await gate.record_pass(exposed.name, arguments, principal)
            except HitlError as error:
                unrecorded = error

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(record)
            result, failure = await call()
        if pass_id is not None and failure is not None:
            try:
                await gate.record_pass_outcome(pass_id, exposed.name, principal, failure)
            except HitlError as error:
                unrecorded = error
        if unrecorded is not None:
            # No answer without its record: a read nobody can account for is what the audit rules out. The
            # call was passed (read-only or trusted), so withholding its answer undoes nothing the caller
            # needs; the call can simply be made again once the store takes writes.
            logger.error(
                "the passed call %s by %s could not be audited: %s", exposed.name, principal, unrecorded
            )
            raise ToolError(
                f"{exposed.name} was answered but its audit record could not be written ({unrecorded}); "
                "the answer is withheld. Call it again once the store takes writes."
            ) from unrecorded
        return result

    async def _call(self, exposed: Exposed, arguments: dict[str, Any]) -> tuple[CallToolResult, str | None]:
        """The upstream's answer as it is, and what went wrong when it is an error or never came."""
        try:
            result = await self.view.call(exposed.upstream, exposed.tool.name, arguments)
        except Exception as error:
            return _not_answered(exposed, error), failed(error)
        return result, "answered with an error" if result.is_error else None


def failed(error: Exception) -> str:
    """A pass's outcome when its call raised: what the `pass-outcome` record says."""
    return f"failed: {type(error).__name__}: {error}"


def _not_answered(exposed: Exposed, error: Exception) -> CallToolResult:
    return CallToolResult(
        is_error=True,
        content=[TextContent(type="text", text=f"{exposed.upstream} did not answer: {error}")],
    )


def not_answered(exposed: Exposed, error: Exception) -> dict[str, Any]:
    """`_call`'s answer for a call that raised, in its wire form."""
    return _not_answered(exposed, error).model_dump(by_alias=True, mode="json", exclude_none=True)


def _signature(exposed: Exposed) -> str:
    return repr((exposed.gated, exposed.tool.model_dump(mode="json"), exposed.target, exposed.preview_call))


def _filed_schema() -> dict[str, Any]:
    from hitl_mcp.server import FiledRequest

    return FiledRequest.model_json_schema()

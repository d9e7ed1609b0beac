"""The gateway: upstream MCP servers' tools behind the gate, kept in step with the upstreams.

`Gateway` owns the supervisor of upstream sessions and hitl's MCP tools for their tools; the server runs
it beside the gate. Importing it pulls in the SDK's client, so only a server with upstreams does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import SubscriptionBus

from hitl_mcp.gate import Gate
from hitl_mcp.gateway.tools import FileHandler, GatewayTools, PrincipalOf, ProxyTool
from hitl_mcp.gateway.view import SupervisedUpstreams
from hitl_mcp.upstream.settings import UpstreamSettings
from hitl_mcp.upstream.supervisor import Upstreams

__all__ = ["Gateway", "ProxyTool"]


class Gateway:
    def __init__(
        self,
        app: MCPServer[Any],
        upstreams: Iterable[UpstreamSettings],
        *,
        bus: SubscriptionBus,
        file: FileHandler,
        principal_of: PrincipalOf,
    ) -> None:
        self.upstreams = Upstreams(upstreams)
        self.tools = GatewayTools(
            app, SupervisedUpstreams(self.upstreams), file=file, principal_of=principal_of, bus=bus
        )

    async def run(self, gate: Gate) -> None:
        """Keep the upstreams' sessions alive and hitl's tools in step with theirs. Cancel it to stop."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.upstreams.run)
            seen = -1
            while True:
                seen = await self.upstreams.wait_for_change(seen)
                if self.tools.sync(gate):
                    await self.tools.tell_clients()

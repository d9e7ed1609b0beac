"""The gateway: upstream MCP servers' tools behind the gate, kept in step with the upstreams.

`Gateway` owns the supervisor of upstream sessions and hitl's MCP tools for their tools; the server runs
it beside the gate. Importing it pulls in the SDK's client, so only a server with upstreams does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import SubscriptionBus

from hitl_mcp.gate import Gate
from hitl_mcp.gateway import changes
from hitl_mcp.gateway.starting import STARTING_WAIT_SECONDS, starting_middleware
from hitl_mcp.gateway.tools import FileHandler, GatewayTools, PrincipalOf, ProxyTool
from hitl_mcp.gateway.view import SupervisedUpstreams
from hitl_mcp.upstream.settings import UpstreamSettings
from hitl_mcp.upstream.supervisor import Upstreams

__all__ = ["Gateway", "ProxyTool"]

logger = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        app: MCPServer[Any],
        upstreams: Iterable[UpstreamSettings],
        *,
        bus: SubscriptionBus,
        file: FileHandler,
        principal_of: PrincipalOf,
        start_wait: float = STARTING_WAIT_SECONDS,
    ) -> None:
        self.upstreams = Upstreams(upstreams)
        self.tools = GatewayTools(
            app, SupervisedUpstreams(self.upstreams), file=file, principal_of=principal_of, bus=bus
        )
        self._synced: anyio.Event | None = None
        self._synced_generation = -1
        # Before the tool manager: a call of an upstream's tool still starting waits, then says so.
        self.middleware = starting_middleware(self.upstreams, self, start_wait)

    async def run(self, gate: Gate) -> None:
        """Keep the upstreams' sessions alive and hitl's tools in step with theirs. Cancel it to stop."""
        try:
            await changes.restore(gate.store, self.upstreams.baseline, self._configured())
        except Exception:  # the store is down: changes recorded earlier cannot hold tools this time
            logger.exception("the recorded changes of upstream tools could not be read")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.upstreams.run)
            seen = -1
            while True:
                seen = await self.upstreams.wait_for_change(seen)
                if self.tools.sync(gate):
                    await self.tools.tell_clients()
                self._synced_generation = seen
                self._tell_waiters()
                for change in self.upstreams.take_changes():
                    await changes.record(gate, change, self.upstreams.settings(change.upstream))

    def registered(self, name: str) -> bool:
        return name in self.tools.names

    def caught_up(self) -> bool:
        return self._synced_generation == self.upstreams.generation

    async def until(self, done: Callable[[], bool], timeout: float) -> None:
        # The supervisor's state moves before hitl's tools do: done only once they are synced with it.
        with anyio.move_on_after(timeout):
            while not (done() and self.caught_up()):
                if self._synced is None:
                    self._synced = anyio.Event()
                await self._synced.wait()

    def _tell_waiters(self) -> None:
        if self._synced is not None:
            self._synced.set()
            self._synced = None

    def _configured(self) -> list[UpstreamSettings]:
        return [self.upstreams.settings(state.name) for state in self.upstreams.states()]

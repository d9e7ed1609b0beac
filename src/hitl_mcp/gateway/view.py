"""The supervisor's upstreams as the gateway sees them: every tool of every ready upstream, as exposed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp_types import CallToolResult

from hitl_mcp.gateway.tools import Exposed
from hitl_mcp.upstream.state import Status
from hitl_mcp.upstream.supervisor import Upstreams


class SupervisedUpstreams:
    """`UpstreamView` over a running `Upstreams`."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    def exposed(self) -> Sequence[Exposed]:
        return [
            Exposed(
                upstream=state.name,
                tool=listed.tool,
                gated=listed.exposure.gated,
                why=listed.exposure.why,
                target=state.target,
                preview_call=listed.preview,
            )
            for state in self.upstreams.states()
            if state.status is Status.READY
            for listed in state.tools
        ]

    def live(self, upstream: str, tool: str) -> bool:
        return self.upstreams.live(upstream, tool)

    def connected(self, upstream: str) -> bool:
        try:
            return self.upstreams.state(upstream).status is Status.READY
        except KeyError:
            return False

    def passes(self, upstream: str, tool: str) -> bool:
        return self.upstreams.passes(upstream, tool)

    async def call(
        self, upstream: str, tool: str, arguments: dict[str, Any], *, timeout: float | None = None
    ) -> CallToolResult:
        return await self.upstreams.call(upstream, tool, arguments, timeout=timeout)

    def raw_version(self, upstream: str) -> str | None:
        return self.upstreams.raw_version(upstream)

    async def call_raw(self, upstream: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.upstreams.call_raw(upstream, tool, arguments)

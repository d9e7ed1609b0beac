"""What every web handler shares: who may sign in, and the running server's gate (and through it, its
settings)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hitl_mcp.gate import Gate
from hitl_mcp.web.auth import SignIn
from hitl_mcp.web.problems import Refused


@dataclass(frozen=True)
class WebFace:
    sign_in: SignIn
    running_gate: Callable[[], Gate | None]
    """The gate of the MCP server this face runs beside, while it runs: both share one gate, one store."""
    stopping: Callable[[], bool] = field(default=lambda: False)
    """Whether the server is shutting down: open event streams end, so that it need not wait for them."""
    clock: Callable[[], float] = field(default=time.time)

    def gate(self) -> Gate:
        gate = self.running_gate()
        if gate is None:
            raise Refused(503, "the server is starting or stopping; try again in a moment")
        return gate

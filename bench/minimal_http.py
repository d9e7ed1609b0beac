"""The HTTP baseline: a minimal `MCPServer` with one no-op tool, served the way `hitl serve --http` serves.

`python -m bench.minimal_http PORT`. The tool takes `buy_stock`'s three arguments (so argument validation
costs the same) and returns them as a model (structured content and an output schema, as a gated call
does). It is served by `hitl_mcp.server.serve_http`, the function `hitl serve --http` calls: the same
uvicorn configuration (access log included), the same Starlette app from the SDK, the same host.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from hitl_mcp.server import serve_http


class Echo(BaseModel):
    symbol: str
    quantity: int
    price: float


def build() -> MCPServer:  # type: ignore[type-arg]
    app: MCPServer = MCPServer("minimal")  # type: ignore[type-arg]

    @app.tool()
    async def noop(symbol: str, quantity: int, price: float) -> Echo:
        """Does nothing and says so (benchmark only)."""
        return Echo(symbol=symbol, quantity=quantity, price=price)

    return app


if __name__ == "__main__":
    serve_http(build(), host="127.0.0.1", port=int(sys.argv[1]))  # type: ignore[arg-type]

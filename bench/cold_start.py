"""`cold_start_ratio`: spawn `hitl serve` (stdio) until `tools/list` answers, against a minimal
`MCPServer` with one tool, same run, median of several interleaved starts.

Both are spawned by the SDK's stdio client from this venv and timed from the spawn until the `tools/list`
answer arrives (initialize included); shutting them down is not timed. One untimed start of each comes
first, so both find the OS file cache warm.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from bench.common import HITL, Context, Figure, median, setup

MINIMAL_SERVER = '''\
from mcp.server.mcpserver import MCPServer

app = MCPServer("minimal")


@app.tool()
def ping() -> str:
    """Answers pong."""
    return "pong"


if __name__ == "__main__":
    app.run()
'''


async def time_start(params: StdioServerParameters, expected_tools: int) -> float:
    start = time.perf_counter()
    with anyio.fail_after(60):
        async with Client(params) as client:
            tools = await client.list_tools()
            elapsed = time.perf_counter() - start
    if len(tools.tools) != expected_tools:
        raise RuntimeError(f"{params.command} listed {len(tools.tools)} tools, not {expected_tools}")
    return elapsed


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("cold_start"))
    script: Path = env.folder / "minimal_server.py"
    script.write_text(MINIMAL_SERVER, encoding="utf-8")
    hitl = StdioServerParameters(command=str(HITL), args=["serve"], env=env.env, cwd=env.folder)
    minimal = StdioServerParameters(command=sys.executable, args=[str(script)], env=env.env, cwd=env.folder)
    starts = ctx.reps(9, 2)

    async def measure() -> tuple[list[float], list[float]]:
        ours: list[float] = []
        theirs: list[float] = []
        await time_start(hitl, 9)  # warm-up; also creates the store, as a first run would have
        await time_start(minimal, 1)
        for _ in range(starts):
            ours.append(await time_start(hitl, 9))
            theirs.append(await time_start(minimal, 1))
        return ours, theirs

    ours, theirs = anyio.run(measure)
    ratio = median(ours) / median(theirs)
    return [
        Figure(
            key="cold_start_ratio",
            value=round(ratio, 3),
            target="≤ 1.25",
            met=ratio <= 1.25,
            measured=f"hitl serve {median(ours) * 1000:.0f} ms",
            baseline=f"minimal MCPServer {median(theirs) * 1000:.0f} ms",
            notes=[f"median of {starts} interleaved starts each, spawn until tools/list answers"],
        )
    ]

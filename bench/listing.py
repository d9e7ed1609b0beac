"""`list_page_p50_ms_100k`: `list_pending`, first and 100th page of 50, with 100,000 pending requests and
100,000 finished ones beside them.

The store is filled by `bench.populate` (bulk inserts of rows cloned from real ones). The figure is the
MCP tool as an approver's session calls it over the SDK's in-process client — the worse of the two pages'
medians. Beside it, to tell the parts apart: the same calls with the client's check of the result against
the tool's output schema switched off (the server and the transport alone), and `Gate.list` (the store
and the models alone). The filled store is kept for `rss_mb_100k`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import Client

from bench import populate
from bench.common import APPROVER, Context, Figure, Setup, Stopwatch, median, setup
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.server import build_server

PAGE = 50
DEEP_PAGE = 100

_filled: dict[str, Setup] = {}


def filled_store(ctx: Context) -> Setup:
    """A store with `ctx.population` pending and as many finished requests (made once per run)."""
    if "store" not in _filled:
        env = setup(ctx.folder("listing"))
        tpl = populate.template(setup(ctx.folder("template-listing")))
        populate.fill(env.db_path, tpl, pending=ctx.population, finished=ctx.population)
        _filled["store"] = env
    return _filled["store"]


async def deep_cursor(gate: Gate) -> str:
    cursor: str | None = None
    for _ in range(DEEP_PAGE - 1):
        page = await gate.list(limit=PAGE, cursor=cursor)
        cursor = page.next_cursor
        if cursor is None:
            raise RuntimeError(f"fewer than {DEEP_PAGE} pages pending")
    assert cursor is not None
    return cursor


async def sample(call: Callable[[], Awaitable[int]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        got = await call()
        samples.append(time.perf_counter() - start)
        if got != PAGE:
            raise RuntimeError(f"a page held {got} requests, not {PAGE}")
    return samples


def run(ctx: Context) -> list[Figure]:
    watch = Stopwatch()
    env = filled_store(ctx)
    fill_seconds = watch.elapsed
    count = ctx.reps(200, 30)

    async def measure() -> dict[str, list[float]]:
        results: dict[str, list[float]] = {}
        async with open_gate(env.settings) as gate:
            cursor = await deep_cursor(gate)

            async def gate_first() -> int:
                return len((await gate.list(limit=PAGE)).requests)

            async def gate_deep() -> int:
                return len((await gate.list(limit=PAGE, cursor=cursor)).requests)

            async with Client(build_server(env.settings, principal=APPROVER, gate=gate)) as client:

                async def mcp(arguments: dict[str, object]) -> int:
                    result = await client.call_tool("list_pending", arguments)
                    if result.is_error or result.structured_content is None:
                        raise RuntimeError(f"list_pending failed: {result.content}")
                    return len(result.structured_content["requests"])

                async def mcp_first() -> int:
                    return await mcp({"limit": PAGE})

                async def mcp_deep() -> int:
                    return await mcp({"limit": PAGE, "cursor": cursor})

                calls = {"mcp first": mcp_first, "mcp 100th": mcp_deep}
                calls |= {"gate first": gate_first, "gate 100th": gate_deep}
                for call in calls.values():
                    await sample(call, 10)  # warm-up
                for name, call in calls.items():
                    results[name] = await sample(call, count)

                async def unchecked(name: str, result: Any) -> None:
                    return None

                # Bench-only: skip the client's jsonschema check of each result against the output schema.
                setattr(client.session, "validate_tool_result", unchecked)  # noqa: B010
                results["unchecked first"] = await sample(mcp_first, count)
                results["unchecked 100th"] = await sample(mcp_deep, count)
        return results

    results = anyio.run(measure)
    p50 = {name: median(samples) * 1000 for name, samples in results.items()}
    value = max(p50["mcp first"], p50["mcp 100th"])
    return [
        Figure(
            key="list_page_p50_ms_100k",
            value=round(value, 3),
            target="≤ 2 ms",
            met=value <= 2.0 and not ctx.quick,
            measured=f"list_pending p50 first {p50['mcp first']:.2f} ms, 100th {p50['mcp 100th']:.2f} ms",
            baseline=f"Gate.list first {p50['gate first']:.2f} ms, 100th {p50['gate 100th']:.2f} ms",
            notes=[
                f"{ctx.population:,} pending + {ctx.population:,} finished requests (bulk-filled in "
                f"{fill_seconds:.1f} s); pages of {PAGE}; {count} calls each over the in-process client",
                f"without the client's output-schema check: first {p50['unchecked first']:.2f} ms, 100th "
                f"{p50['unchecked 100th']:.2f} ms — the rest is the Python SDK client validating the 50 "
                "lines against list_pending's output schema with jsonschema",
            ],
            extra={
                "list_page_gate_p50_ms_100k": round(max(p50["gate first"], p50["gate 100th"]), 3),
                "list_page_unchecked_p50_ms_100k": round(
                    max(p50["unchecked first"], p50["unchecked 100th"]), 3
                ),
            },
        )
    ]

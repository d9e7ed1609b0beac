"""`mcp_file_ratio`: a gated-tool call over the SDK's in-process client, against a no-op tool on the same
server in the same run.

The no-op tool takes the same three arguments as `buy_stock` (so argument validation costs the same) and
returns a small model, as in the SDK's own measurement. The gated call files a real `buy_stock` request:
validation, the ledger preview (the ledger exists: one order has gone through first, as in any running
system), policy selection, the insert with its audit record, and the read-back.

A third tool shows what durability alone costs: the no-op that also commits one small row in its own SQLite
file (WAL, the store's `synchronous`) from a worker thread, as the store does — the least any call that
files something durably before answering can take. Its ratio is printed beside the figure.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp_types import CallToolResult
from pydantic import BaseModel

from bench.common import AGENT, APPROVER, Context, Figure, median, ms, setup
from hitl_mcp.gate import open_gate
from hitl_mcp.server import build_server

BUY = {"symbol": "GOOGL", "quantity": 1, "price": 1.0}


class Echo(BaseModel):
    symbol: str
    quantity: int
    price: float


async def noop(symbol: str, quantity: int, price: float) -> Echo:
    """Does nothing and says so (benchmark only)."""
    return Echo(symbol=symbol, quantity=quantity, price=price)


class DurableNoop:
    """The no-op tool plus one durable commit, run in a worker thread like the store's."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS calls (seq INTEGER PRIMARY KEY, symbol TEXT)")
        self.limiter = anyio.CapacityLimiter(1)

    def _commit(self, symbol: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO calls (symbol) VALUES (?)", (symbol,))
        self.conn.execute("COMMIT")

    async def __call__(self, symbol: str, quantity: int, price: float) -> Echo:
        """Does nothing but write down that it was called (benchmark only)."""
        await anyio.to_thread.run_sync(self._commit, symbol, limiter=self.limiter)
        return Echo(symbol=symbol, quantity=quantity, price=price)


async def timed(client: Client, tool: str, arguments: dict[str, Any]) -> float:
    start = time.perf_counter()
    result: CallToolResult = await client.call_tool(tool, arguments)
    elapsed = time.perf_counter() - start
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return elapsed


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("mcp_file"))
    calls = ctx.reps(600, 60)

    async def measure() -> tuple[list[float], list[float], list[float]]:
        async with open_gate(env.settings) as gate:  # one order on the ledger, so the preview reads it
            filed = await gate.file("buy_stock", BUY, AGENT)
            await gate.approve(filed.request_id, APPROVER)
        app = build_server(env.settings, principal=AGENT)
        app.add_tool(noop, name="noop", description="Does nothing (benchmark only).")
        durable_noop = DurableNoop(env.folder / "durable-noop.db", env.settings.gate.synchronous)
        app.add_tool(durable_noop.__call__, name="durable_noop", description="Commits a row (bench only).")
        gated: list[float] = []
        plain: list[float] = []
        durable: list[float] = []
        try:
            async with Client(app) as client:
                for _ in range(30):  # warm-up
                    await timed(client, "noop", BUY)
                    await timed(client, "durable_noop", BUY)
                    await timed(client, "buy_stock", BUY)
                for _ in range(calls):  # interleaved, so drift hits all alike
                    plain.append(await timed(client, "noop", BUY))
                    durable.append(await timed(client, "durable_noop", BUY))
                    gated.append(await timed(client, "buy_stock", BUY))
        finally:
            durable_noop.conn.close()
        return gated, plain, durable

    gated, plain, durable = anyio.run(measure)
    ratio = median(gated) / median(plain)
    durable_ratio = median(gated) / median(durable)
    return [
        Figure(
            key="mcp_file_ratio",
            value=round(ratio, 3),
            target="≤ 1.5",
            met=ratio <= 1.5,
            measured=f"buy_stock p50 {ms(median(gated))}",
            baseline=f"no-op tool p50 {ms(median(plain))}",
            notes=[
                f"{calls} calls each, interleaved, one in-process client session",
                f"a no-op tool that commits one row durably (WAL, synchronous="
                f"{env.settings.gate.synchronous.upper()}, worker thread): p50 {ms(median(durable))}; "
                f"buy_stock is {durable_ratio:.2f}× that",
            ],
            extra={"mcp_file_ratio_vs_durable_noop": round(durable_ratio, 3)},
        )
    ]

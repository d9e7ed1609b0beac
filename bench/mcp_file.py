"""`mcp_file_ratio`: a gated-tool call over the SDK's in-process client, against a no-op tool on the same
server in the same run.

The no-op tool takes the same three arguments as `buy_stock` (so argument validation costs the same) and
returns a small model, as in the SDK's own measurement. The gated call files a real `buy_stock` request:
validation, the ledger preview (the ledger exists: one order has gone through first, as in any running
system), policy selection, the insert with its audit record, and the read-back.

A third tool shows what durability alone costs: the no-op that also commits one small row in its own SQLite
file (WAL, the store's `synchronous`) from a worker thread, as the store does — the least any call that
files something durably before answering can take. Its ratio is printed beside the figure.

The bench config turns the repeat check off (`[gate] dedup_seconds = 0`): the same order filed again while
the first is pending would otherwise return the first and file nothing. A fourth series files `buy_stock`
with the default window (600 s) on a second server with a store and ledger of its own (two stores sharing
one file would each find its page cache spoilt by the other's commits), a different quantity each call so
that nothing repeats: what the lookup for a repeated call adds to a filing.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
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

    other = setup(ctx.folder("mcp_file_dedup")).settings
    windowed = replace(other, gate=other.gate.model_copy(update={"dedup_seconds": 600.0}))

    async def measure() -> tuple[list[float], list[float], list[float], list[float]]:
        for settings in (env.settings, windowed):
            async with open_gate(settings) as gate:  # one order on the ledger, so the preview reads it
                filed = await gate.file("buy_stock", BUY, AGENT)
                await gate.approve(filed.request_id, APPROVER)
        app = build_server(env.settings, principal=AGENT)
        app.add_tool(noop, name="noop", description="Does nothing (benchmark only).")
        durable_noop = DurableNoop(env.folder / "durable-noop.db", env.settings.gate.synchronous)
        app.add_tool(durable_noop.__call__, name="durable_noop", description="Commits a row (bench only).")
        gated: list[float] = []
        plain: list[float] = []
        durable: list[float] = []
        deduped: list[float] = []
        try:
            async with Client(app) as client, Client(build_server(windowed, principal=AGENT)) as checked:
                for n in range(30):  # warm-up
                    await timed(client, "noop", BUY)
                    await timed(client, "durable_noop", BUY)
                    await timed(client, "buy_stock", BUY)
                    await timed(checked, "buy_stock", BUY | {"quantity": 10_000 + n})
                for n in range(calls):  # interleaved, so drift hits all alike
                    plain.append(await timed(client, "noop", BUY))
                    durable.append(await timed(client, "durable_noop", BUY))
                    gated.append(await timed(client, "buy_stock", BUY))
                    deduped.append(await timed(checked, "buy_stock", BUY | {"quantity": 20_000 + n}))
        finally:
            durable_noop.conn.close()
        return gated, plain, durable, deduped

    gated, plain, durable, deduped = anyio.run(measure)
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
                f"with the default repeat window (dedup_seconds = 600; every call distinct, so each looks up "
                f"and files): buy_stock p50 {ms(median(deduped))}, "
                f"{median(deduped) / median(gated):.2f}× the figure's",
            ],
            extra={"mcp_file_ratio_with_dedup": round(median(deduped) / median(plain), 3)},
        ),
        Figure(
            key="mcp_file_ratio_vs_durable_noop",
            value=round(durable_ratio, 3),
            target="≤ 1.5",
            met=durable_ratio <= 1.5,
            measured=f"buy_stock p50 {ms(median(gated))}",
            baseline=f"durable no-op p50 {ms(median(durable))}",
            notes=[
                "the no-op tool that also commits one row to its own SQLite file, WAL, synchronous="
                f"{env.settings.gate.synchronous.upper()} like the store, from a worker thread; same calls"
            ],
        ),
    ]

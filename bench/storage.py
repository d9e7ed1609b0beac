"""`bytes_per_request`: store file size / requests, after 100,000 requests with their audit records.

Each request is filed, approved and executed (`buy_stock`, default policy): one request row, one
decision, four audit records (filed, approved, claimed, executed), as `bench.populate` clones them from a
real cycle. Beside it: the same figure for requests made one by one through the real gate (the growth
over an empty store, so the schema's fixed pages do not count), and LangGraph's SqliteSaver per file +
resume cycle.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio

from bench import populate
from bench.common import AGENT, APPROVER, Context, Figure, file_size, setup
from bench.mcp_cycle import LangGraphCycle, langgraph_missing
from hitl_mcp.gate import open_gate
from hitl_mcp.models import Status


def _truncate_wal(path: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def breakdown(path: Path, requests: int) -> str:
    """Bytes per request of each table and index, largest first (SQLite's dbstat), or why not."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name HAVING sum(pgsize) > 0 ORDER BY 2 DESC"
        ).fetchall()
    except sqlite3.OperationalError:
        return "per table: this SQLite has no dbstat"
    finally:
        conn.close()
    report = sum(size for name, size in rows if name.startswith("report_"))
    top = ", ".join(f"{name} {size / requests:,.0f} B" for name, size in rows[:6])
    return f"per request: {top}; the report's running totals {report / requests:,.1f} B"


def through_gate(ctx: Context, count: int) -> float:
    """Bytes per request for `count` requests filed, approved and executed through the gate."""
    env = setup(ctx.folder("storage-gate"))

    async def cycles() -> int:
        async with open_gate(env.settings) as gate:
            _truncate_wal(str(env.db_path))
            empty = file_size(env.db_path)
            for n in range(count):
                args = {"symbol": "GOOGL", "quantity": 1 + n % 500, "price": 100.0 + n % 997 / 10}
                filed = await gate.file("buy_stock", args, AGENT)
                done = await gate.approve(filed.request_id, APPROVER)
                if done.status is not Status.EXECUTED:
                    raise RuntimeError(f"request ended {done.status}")
            return empty

    empty = anyio.run(cycles)
    _truncate_wal(str(env.db_path))
    return (file_size(env.db_path) - empty) / count


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("storage"))
    tpl = populate.template(setup(ctx.folder("template-storage")))
    count = ctx.population
    populate.fill(env.db_path, tpl, pending=0, finished=count)
    _truncate_wal(str(env.db_path))
    size = file_size(env.db_path)
    conn = sqlite3.connect(env.db_path)
    try:
        requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        records = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    finally:
        conn.close()
    value = size / requests
    gate_count = ctx.reps(500, 50)
    gate_bytes = through_gate(ctx, gate_count)
    notes = [
        f"{requests:,} executed requests, {records / requests:.1f} audit records and one decision each, "
        f"{size / 1e6:.1f} MB; {gate_count} requests made one by one through the gate grew an empty store "
        f"by {gate_bytes:,.0f} bytes each",
        breakdown(env.db_path, requests),
    ]
    extra: dict[str, float | None] = {"bytes_per_request_through_gate": round(gate_bytes)}
    missing = langgraph_missing()
    if missing:
        baseline = "LangGraph not installed"
        notes.append(missing)
        extra["langgraph_bytes_per_cycle"] = None
    else:
        graph = LangGraphCycle(ctx.folder("storage-langgraph") / "langgraph.db")
        try:
            graph.run(ctx.reps(500, 50))
            lg_bytes = graph.bytes_per_cycle()
        finally:
            graph.close()
        baseline = f"LangGraph SqliteSaver {lg_bytes:,.0f} B per file + resume cycle"
        extra["langgraph_bytes_per_cycle"] = round(lg_bytes)
    return [
        Figure(
            key="bytes_per_request",
            value=round(value),
            target="≤ 2,048",
            met=value <= 2048 and not ctx.quick,
            measured=f"{value:,.0f} B per request",
            baseline=baseline,
            notes=notes,
            extra=extra,
        )
    ]

"""Fill a store with many requests fast, row for row as the gate writes them.

Filing 200,000 requests through the gate would take minutes of fsyncs, so the rows are cloned from a
template: one request filed and one filed, approved and executed through the real gate (`buy_stock`,
default policy) in a scratch store. Every clone keeps the template's columns and JSON shapes, with its
own id, arguments (validated by the action), digest, summary, preview, result and times; its audit
records are re-chained with the store's own hash function, so `hitl audit verify` accepts the trail.
Everything goes in as one transaction of bulk inserts.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from bench.common import AGENT, APPROVER, Setup
from hitl_mcp.actions.buy_stock import BuyStock, BuyStockSettings
from hitl_mcp.audit import GENESIS, record_hash
from hitl_mcp.gate import arguments_digest, new_request_id, open_gate
from hitl_mcp.ledger import cents_to_dollars, order_total_cents
from hitl_mcp.store.sqlite import SQLiteStore

Row = dict[str, Any]
SYMBOLS = ("GOOGL", "AAPL", "MSFT", "AMZN", "NVDA", "BRK.B", "TSLA", "META", "JPM", "V")


def dumps(value: Any) -> str:
    """JSON exactly as the SQLite store writes it (store/sqlite.py `_dumps`)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Template:
    pending: Row
    pending_audit: list[Row]
    finished: Row
    finished_decisions: list[Row]
    finished_audit: list[Row]


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Row]:
    cursor = conn.execute(sql, params)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def template(setup: Setup) -> Template:
    """One pending and one executed request made by the real gate, read back with every column."""

    async def make() -> tuple[str, str]:
        async with open_gate(setup.settings) as gate:
            pending = await gate.file("buy_stock", {"symbol": "GOOGL", "quantity": 3, "price": 151.25}, AGENT)
            filed = await gate.file("buy_stock", {"symbol": "AAPL", "quantity": 7, "price": 210.5}, AGENT)
            done = await gate.approve(filed.request_id, APPROVER)
            if done.status.value != "executed":
                raise RuntimeError(f"the template request ended {done.status}")
            return pending.request_id, filed.request_id

    pending_id, finished_id = anyio.run(make)
    conn = sqlite3.connect(setup.db_path)
    try:
        one = "SELECT * FROM {} WHERE {} = ? ORDER BY rowid"
        return Template(
            pending=_rows(conn, one.format("requests", "id"), (pending_id,))[0],
            pending_audit=_rows(conn, one.format("audit", "request_id"), (pending_id,)),
            finished=_rows(conn, one.format("requests", "id"), (finished_id,))[0],
            finished_decisions=_rows(conn, one.format("decisions", "request_id"), (finished_id,)),
            finished_audit=_rows(conn, one.format("audit", "request_id"), (finished_id,)),
        )
    finally:
        conn.close()


@dataclass
class Rows:
    requests: list[Row]
    decisions: list[Row]
    audit: list[Row]


def clones(tpl: Template, pending: int, finished: int, *, seed: int = 4, now: float | None = None) -> Rows:
    """`pending` + `finished` requests in random order, oldest first, with their decisions and audit."""
    rng = random.Random(seed)
    action = BuyStock(BuyStockSettings())  # only `parse` and `summary`: its ledger is never opened
    now = time.time() if now is None else now
    kinds = [True] * finished + [False] * pending
    rng.shuffle(kinds)
    out = Rows([], [], [])
    ttl = tpl.pending["expires_at"] - tpl.pending["created_at"]
    cash = json.loads(tpl.pending["preview"])["cash_before"]
    for index, is_finished in enumerate(kinds):
        request_id = new_request_id()
        args = action.parse(
            {
                "symbol": rng.choice(SYMBOLS),
                "quantity": rng.randint(1, 500),
                "price": round(rng.uniform(1, 1000), 2),
            }
        )
        normalised = args.model_dump(mode="json")
        digest = arguments_digest("buy_stock", normalised)
        total = cents_to_dollars(order_total_cents(args.quantity, args.price))
        preview = {
            "total": total,
            "cash_before": cash,
            "cash_after": cash - total,
            "position_before": 0,
            "position_after": args.quantity,
            "sufficient_cash": cash >= total,
        }
        # Oldest first, one every 0.1 s, ending now: nothing pending has expired.
        created = now - (len(kinds) - index) * 0.1
        base = tpl.finished if is_finished else tpl.pending
        row = dict(base)
        row.update(
            seq=None,
            id=request_id,
            arguments=dumps(normalised),
            arguments_digest=digest,
            summary=action.summary(args),
            preview=dumps(preview),
            created_at=created,
            expires_at=created + ttl,
            updated_at=created + (0.05 if is_finished else 0.0),
        )
        times = {}
        if is_finished:
            result = json.loads(base["result"])
            result.update(
                order_id=request_id,
                symbol=args.symbol,
                quantity=args.quantity,
                price=args.price,
                total=total,
                cash_after=cash - total,
                position_after=args.quantity,
                filled_at=datetime.fromtimestamp(created + 0.05, UTC).isoformat(),
            )
            row["result"] = dumps(result)
            for decision in tpl.finished_decisions:
                out.decisions.append(dict(decision, request_id=request_id, decided_at=created + 0.04))
            times = {"filed": created, "approved": created + 0.04}
        out.requests.append(row)
        for record in tpl.finished_audit if is_finished else tpl.pending_audit:
            details = json.loads(record["details"])
            if "arguments_digest" in details:
                details["arguments_digest"] = digest
            at = times.get(record["event"], created + 0.05)
            out.audit.append(dict(record, request_id=request_id, at=at, details=dumps(details)))
    return out


def _chained(audit: list[Row], start_seq: int, prev_hash: str) -> Iterator[Row]:
    for offset, record in enumerate(audit):
        seq = start_seq + offset
        digest = record_hash(
            prev_hash,
            seq,
            record["request_id"],
            record["event"],
            record["actor"],
            record["at"],
            record["details"],
        )
        yield dict(record, seq=seq, prev_hash=prev_hash, hash=digest)
        prev_hash = digest


def _insert(conn: sqlite3.Connection, table: str, rows: Iterable[Row], columns: list[str]) -> None:
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    conn.executemany(sql, ([row[name] for name in columns] for row in rows))


def fill(path: Path, tpl: Template, pending: int, finished: int, *, synchronous: str = "full") -> None:
    """Create the store at `path` with the store's own schema and add the requests in one transaction."""

    async def create() -> None:
        store = SQLiteStore(path, synchronous="full" if synchronous == "full" else "normal")
        await store.open()
        await store.close()

    anyio.run(create)
    rows = clones(tpl, pending, finished)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("BEGIN IMMEDIATE")
        head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        start, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        request_columns = [name for name in tpl.pending if name != "seq"]
        _insert(conn, "requests", rows.requests, request_columns)
        if rows.decisions:
            _insert(conn, "decisions", rows.decisions, list(tpl.finished_decisions[0]))
        _insert(conn, "audit", _chained(rows.audit, start, prev), list(tpl.pending_audit[0]))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()

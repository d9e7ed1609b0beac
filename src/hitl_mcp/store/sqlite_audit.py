"""The audit trail in the SQLite store: appending a chained record, and reading records back in order."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from hitl_mcp.audit import COLUMNS, AuditRecord, link


def append(
    conn: sqlite3.Connection, request_id: str, event: str, actor: str, at: float, details: str
) -> None:
    """Append one chained record. Must run inside the caller's write transaction (BEGIN IMMEDIATE).

    Reading the head and inserting after it are only safe because the write lock is held from before the
    read until the commit: two processes would otherwise both chain onto the same head. The read is one
    step down the rowid b-tree, so appending stays as cheap as the plain insert it replaces.
    """
    if not conn.in_transaction:
        raise RuntimeError("an audit record must be appended inside the transition's transaction")
    head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    record = link(head[0] if head else 0, head[1] if head else None, request_id, event, actor, at, details)
    conn.execute(f"INSERT INTO audit ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", record.row())


def read_records(
    conn: sqlite3.Connection, where: str = "", params: Iterable[Any] = ()
) -> Iterator[AuditRecord]:
    """Records in seq order, streamed from the cursor: a million of them never sit in memory at once.

    One SELECT is one read snapshot in WAL mode, so writers carry on and the walk sees a consistent trail.
    """
    sql = f"SELECT {COLUMNS} FROM audit {'WHERE ' + where if where else ''} ORDER BY seq"
    for row in conn.execute(sql, tuple(params)):
        yield AuditRecord.from_row(row)


def head(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """The last record's seq and hash; (0, None) for an empty trail."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, None) if row is None else (int(row[0]), str(row[1]))

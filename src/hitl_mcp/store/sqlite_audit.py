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
    seq, hash_ = head(conn)
    record = link(seq, hash_, request_id, event, actor, at, details)
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
    """The last record's seq and hash; (0, None) for an empty trail. A trail archived to its last record
    goes on from the archive checkpoint, never from the start again."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        row = checkpoint_row(conn)
    return (0, None) if row is None else (int(row[0]), str(row[1]))


def checkpoint_row(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The last archived record's seq and hash, or None when nothing was archived (or the store predates
    archives)."""
    try:
        row = conn.execute(
            "SELECT through_seq, through_hash FROM archives ORDER BY through_seq DESC LIMIT 1"
        ).fetchone()
    except sqlite3.OperationalError:  # a store read as found (`hitl audit`), older than schema 6
        return None
    return None if row is None else (int(row[0]), str(row[1]))

"""Archiving in the SQLite store (`hitl_mcp.store.archive` has the rule, the file and the checks)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from hitl_mcp.audit import COLUMNS as AUDIT_COLUMNS
from hitl_mcp.audit import GENESIS, Checkpoint
from hitl_mcp.store import sqlite_audit, sqlite_report
from hitl_mcp.store.archive import (
    DECISION_FIELDS,
    EVENT,
    REQUEST_FIELDS,
    TRAIL,
    ArchiveRaced,
    Entry,
    Group,
    Inputs,
)
from hitl_mcp.store.sqlite_rows import dumps

if TYPE_CHECKING:
    from hitl_mcp.store.sqlite import SQLiteStore

BATCH = 2000
ENTRY_COLUMNS = (
    "from_seq, from_hash, through_seq, through_hash, sha256, file, before, created_at, requests, records"
)
# The requests whose records lie at or before the cut (`?` twice: the checkpoint's seq, the cut's).
ARCHIVED_IDS = "SELECT id FROM requests WHERE id IN (SELECT request_id FROM audit WHERE seq > ? AND seq <= ?)"


def checkpoint_of(conn: sqlite3.Connection) -> Checkpoint:
    row = sqlite_audit.checkpoint_row(conn)
    return Checkpoint(0, GENESIS) if row is None else Checkpoint(*row)


class SQLiteArchive:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def checkpoint(self) -> Checkpoint:
        return await self.store._run(checkpoint_of)

    async def entries(self) -> list[Entry]:
        def read(conn: sqlite3.Connection) -> list[Entry]:
            try:
                rows = conn.execute(f"SELECT {ENTRY_COLUMNS} FROM archives ORDER BY through_seq").fetchall()
            except sqlite3.OperationalError:  # older than schema 6: nothing archived
                return []
            return [Entry(*row) for row in rows]

        return await self.store._run(read)

    async def point(self, seq: int) -> Checkpoint:
        def read(conn: sqlite3.Connection) -> Checkpoint:
            row = conn.execute("SELECT seq, hash FROM audit WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                raise ArchiveRaced(
                    f"audit record seq {seq} is gone: run `hitl audit verify`; nothing was archived"
                )
            return Checkpoint(int(row[0]), str(row[1]))

        return await self.store._run(read)

    async def inputs(self, before: float) -> Inputs:
        def read(conn: sqlite3.Connection) -> Inputs:
            checkpoint = checkpoint_of(conn)
            head = int(conn.execute("SELECT COALESCE(max(seq), 0) FROM audit").fetchone()[0])
            recent = conn.execute("SELECT min(seq) FROM audit WHERE at >= ?", (before,)).fetchone()[0]
            owed = conn.execute("SELECT min(audit_seq) FROM outbox WHERE state = 'pending'").fetchone()[0]
            limit = min(x for x in (head, recent, owed) if x is not None)
            groups = [
                Group(*row)
                for row in conn.execute(
                    "SELECT r.id, min(a.seq), max(a.seq), r.status, r.updated_at, r.expires_at, r.effect "
                    "FROM audit a JOIN requests r ON r.id = a.request_id "
                    "GROUP BY r.id HAVING min(a.seq) <= ? ORDER BY 2",
                    (limit,),
                )
            ]
            return Inputs(checkpoint, max(head, checkpoint.seq), recent, owed, groups)

        return await self.store._run(read)

    async def rows(self, start: Checkpoint, through_seq: int) -> AsyncIterator[dict[str, Any]]:
        conn = await anyio.to_thread.run_sync(self.store._connect_reader)
        try:

            def begin() -> None:
                conn.execute("BEGIN")  # one snapshot for the records, requests and decisions alike
                conn.execute("SELECT count(*) FROM audit").fetchone()

            await anyio.to_thread.run_sync(begin)
            bounds = (start.seq, through_seq)
            records = await anyio.to_thread.run_sync(
                conn.execute,
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq",
                bounds,
            )
            fields = AUDIT_COLUMNS.split(", ")
            while batch := await anyio.to_thread.run_sync(records.fetchmany, BATCH):
                for row in batch:
                    yield {"audit": dict(zip(fields, row, strict=True))}
            requests = await anyio.to_thread.run_sync(
                conn.execute,
                f"SELECT {', '.join(REQUEST_FIELDS)} FROM requests WHERE id IN ({ARCHIVED_IDS}) ORDER BY seq",
                bounds,
            )
            while batch := await anyio.to_thread.run_sync(requests.fetchmany, BATCH):
                found = [dict(zip(REQUEST_FIELDS, row, strict=True)) for row in batch]
                decided = await anyio.to_thread.run_sync(_decisions, conn, [r["id"] for r in found])
                for request in found:
                    yield {"request": request}
                    for decision in decided.get(request["id"], []):
                        yield {"decision": decision}
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close)

    async def commit(self, entry: Entry, now: float) -> None:
        def commit(conn: sqlite3.Connection) -> None:
            if checkpoint_of(conn) != Checkpoint(entry.from_seq, entry.from_hash):
                raise ArchiveRaced("another archive ran meanwhile; nothing was deleted: run it again")
            bounds = (entry.from_seq, entry.through_seq)
            moved = conn.execute(
                f"SELECT request_id, seq FROM audit WHERE seq > ? AND request_id IN ({ARCHIVED_IDS}) LIMIT 1",
                (entry.through_seq, *bounds),
            ).fetchone()
            if moved is not None:
                raise ArchiveRaced(
                    f"request {moved[0]} changed while archiving (seq {moved[1]}); nothing was deleted: run "
                    "it again"
                )
            count = conn.execute(f"SELECT count(*) FROM ({ARCHIVED_IDS})", bounds).fetchone()[0]
            if count != entry.requests:
                raise ArchiveRaced(
                    "the requests to archive changed meanwhile; nothing was deleted: run it again"
                )
            for table in ("decisions", "link_tokens", "slack_messages", "outbox"):
                conn.execute(f"DELETE FROM {table} WHERE request_id IN ({ARCHIVED_IDS})", bounds)
            conn.execute("DELETE FROM outbox WHERE audit_seq > ? AND audit_seq <= ?", bounds)
            conn.execute(f"DELETE FROM requests WHERE id IN ({ARCHIVED_IDS})", bounds)
            # Newest first: each record then leaves as the last of its request, the cheap way for the
            # report's triggers (sqlite_report) to take it off the totals.
            seqs = conn.execute(
                "SELECT seq FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq DESC", bounds
            ).fetchall()
            conn.executemany("DELETE FROM audit WHERE seq = ?", seqs)
            sqlite_report.prune(conn)
            conn.execute(
                f"INSERT INTO archives ({ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.from_seq,
                    entry.from_hash,
                    entry.through_seq,
                    entry.through_hash,
                    entry.sha256,
                    entry.file,
                    entry.before,
                    entry.created_at,
                    entry.requests,
                    entry.records,
                ),
            )
            sqlite_audit.append(conn, TRAIL, EVENT, "hitl", now, dumps(entry.details()))

        await self.store._write(commit)


def _decisions(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The decisions on `ids`, in the order they were made, by request."""
    found: dict[str, list[dict[str, Any]]] = {}
    marks = ", ".join("?" for _ in ids)
    for row in conn.execute(
        f"SELECT {', '.join(DECISION_FIELDS)} FROM decisions WHERE request_id IN ({marks}) ORDER BY rowid",
        ids,
    ):
        found.setdefault(row[0], []).append(dict(zip(DECISION_FIELDS, row, strict=True)))
    return found

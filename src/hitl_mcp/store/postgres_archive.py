"""Archiving in the PostgreSQL store (`hitl_mcp.store.archive` has the rule, the file and the checks).

The deleting transaction takes the audit head's lock first: no server appends a record while it checks
that nothing moved and deletes, so its check cannot be overtaken.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from asyncpg import exceptions as pg

from hitl_mcp.audit import COLUMNS as AUDIT_COLUMNS
from hitl_mcp.audit import GENESIS, Checkpoint
from hitl_mcp.config import redact
from hitl_mcp.errors import HitlError
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
from hitl_mcp.store.postgres_connection import FAULTS, Transaction
from hitl_mcp.store.postgres_rows import Conn, text_out

if TYPE_CHECKING:
    from hitl_mcp.store.postgres import PostgresStore

BATCH = 2000
ENTRY_COLUMNS = (
    "from_seq, from_hash, through_seq, through_hash, sha256, file, before, created_at, requests, records"
)
# The requests whose records lie after $1 and at or before $2.
ARCHIVED_IDS = (
    "SELECT id FROM requests WHERE id IN (SELECT request_id FROM audit WHERE seq > $1 AND seq <= $2)"
)
_JSON = frozenset({"arguments", "preview", "result", "policy", "original_arguments", "roles", "edit"})
_TEXT = frozenset({"summary", "error", "reason"})  # free text, held as one JSON string


def _select(fields: tuple[str, ...]) -> str:
    return ", ".join(f"{name}::text" if name in _JSON | _TEXT else name for name in fields)


def _as_stored(fields: tuple[str, ...], row: Any) -> dict[str, Any]:
    """A row as the SQLite store holds it, so an archive reads the same whichever store wrote it."""
    values = dict(zip(fields, row, strict=True))
    for name in _TEXT & values.keys():
        values[name] = text_out(values[name])
    return values


async def _checkpoint(conn: Conn) -> Checkpoint:
    try:
        row = await conn.fetchrow(
            "SELECT through_seq, through_hash FROM archives ORDER BY through_seq DESC LIMIT 1"
        )
    except pg.UndefinedTableError:  # a store read as found (`hitl audit`), older than schema 5
        return Checkpoint(0, GENESIS)
    return Checkpoint(0, GENESIS) if row is None else Checkpoint(int(row[0]), str(row[1]))


class PostgresArchive:
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def checkpoint(self) -> Checkpoint:
        return await self.store._read(_checkpoint)

    async def entries(self) -> list[Entry]:
        async def read(conn: Conn) -> list[Entry]:
            try:
                rows = await conn.fetch(f"SELECT {ENTRY_COLUMNS} FROM archives ORDER BY through_seq")
            except pg.UndefinedTableError:
                return []
            return [Entry(*row.values()) for row in rows]

        return await self.store._read(read)

    async def point(self, seq: int) -> Checkpoint:
        async def read(conn: Conn) -> Checkpoint:
            row = await conn.fetchrow("SELECT seq, hash FROM audit WHERE seq = $1", seq)
            if row is None:
                raise ArchiveRaced(
                    f"audit record seq {seq} is gone: run `hitl audit verify`; nothing was archived"
                )
            return Checkpoint(int(row[0]), str(row[1]))

        return await self.store._read(read)

    async def inputs(self, before: float) -> Inputs:
        async def read(conn: Conn) -> Inputs:
            checkpoint = await _checkpoint(conn)
            head = int(await conn.fetchval("SELECT COALESCE(max(seq), 0) FROM audit"))
            recent = await conn.fetchval("SELECT min(seq) FROM audit WHERE at >= $1", before)
            owed = await conn.fetchval("SELECT min(audit_seq) FROM outbox WHERE state = 'pending'")
            limit = min(int(x) for x in (head, recent, owed) if x is not None)
            rows = await conn.fetch(
                "SELECT r.id, min(a.seq), max(a.seq), r.status, r.updated_at, r.expires_at, r.effect "
                "FROM audit a JOIN requests r ON r.id = a.request_id "
                "GROUP BY r.seq HAVING min(a.seq) <= $1 ORDER BY 2",
                limit,
            )
            groups = [Group(*row.values()) for row in rows]
            return Inputs(
                checkpoint,
                max(head, checkpoint.seq),
                None if recent is None else int(recent),
                None if owed is None else int(owed),
                groups,
            )

        return await self.store._read(read)

    async def rows(self, start: Checkpoint, through_seq: int) -> AsyncIterator[dict[str, Any]]:
        audit = AUDIT_COLUMNS.replace("details", "details::text")
        fields = tuple(AUDIT_COLUMNS.split(", "))
        try:
            async with (
                self.store._open_pool().acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                async for row in conn.cursor(
                    f"SELECT {audit} FROM audit WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                    start.seq,
                    through_seq,
                    prefetch=BATCH,
                ):
                    yield {"audit": dict(zip(fields, row.values(), strict=True))}
                batch: list[dict[str, Any]] = []
                async for row in conn.cursor(
                    f"SELECT {_select(REQUEST_FIELDS)} FROM requests WHERE id IN ({ARCHIVED_IDS}) "
                    "ORDER BY seq",
                    start.seq,
                    through_seq,
                    prefetch=BATCH,
                ):
                    batch.append(_as_stored(REQUEST_FIELDS, row.values()))
                    if len(batch) >= BATCH:
                        async for line in _with_decisions(conn, batch):
                            yield line
                        batch = []
                async for line in _with_decisions(conn, batch):
                    yield line
        except HitlError:
            raise
        except FAULTS as error:
            raise HitlError(
                f"cannot read the store {redact(self.store.url)} to archive it: {error}"
            ) from None

    async def commit(self, entry: Entry, now: float) -> None:
        async def commit(tx: Transaction) -> None:
            conn = tx.conn
            # Held to the commit: no record is appended while this checks and deletes.
            await conn.execute("SELECT seq FROM audit_head WHERE singleton FOR UPDATE")
            if await _checkpoint(conn) != Checkpoint(entry.from_seq, entry.from_hash):
                raise ArchiveRaced("another archive ran meanwhile; nothing was deleted: run it again")
            bounds = (entry.from_seq, entry.through_seq)
            moved = await conn.fetchrow(
                f"SELECT request_id, seq FROM audit WHERE seq > $2 AND request_id IN ({ARCHIVED_IDS}) "
                "LIMIT 1",
                *bounds,
            )
            if moved is not None:
                raise ArchiveRaced(
                    f"request {moved[0]} changed while archiving (seq {moved[1]}); nothing was deleted: run "
                    "it again"
                )
            count = await conn.fetchval(f"SELECT count(*) FROM ({ARCHIVED_IDS}) AS archived", *bounds)
            if count != entry.requests:
                raise ArchiveRaced(
                    "the requests to archive changed meanwhile; nothing was deleted: run it again"
                )
            for table in ("decisions", "link_tokens", "slack_messages", "outbox"):
                await conn.execute(f"DELETE FROM {table} WHERE request_id IN ({ARCHIVED_IDS})", *bounds)
            await conn.execute("DELETE FROM outbox WHERE audit_seq > $1 AND audit_seq <= $2", *bounds)
            await conn.execute(f"DELETE FROM requests WHERE id IN ({ARCHIVED_IDS})", *bounds)
            await conn.execute("DELETE FROM audit WHERE seq > $1 AND seq <= $2", *bounds)
            await conn.execute(
                f"INSERT INTO archives ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
            )
            await tx.audit(TRAIL, EVENT, "hitl", now, entry.details())

        await self.store._write(commit)


async def _with_decisions(conn: Conn, requests: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    if not requests:
        return
    rows = await conn.fetch(
        f"SELECT {_select(DECISION_FIELDS)} FROM decisions WHERE request_id = ANY($1::text[]) ORDER BY id",
        [request["id"] for request in requests],
    )
    decided: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        decision = _as_stored(DECISION_FIELDS, row.values())
        decided.setdefault(decision["request_id"], []).append(decision)
    for request in requests:
        yield {"request": request}
        for decision in decided.get(request["id"], []):
            yield {"decision": decision}

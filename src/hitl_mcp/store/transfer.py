"""Copy an SQLite store into an empty PostgreSQL database: `hitl db migrate --to URL`.

Everything is copied as it is stored — requests, decisions, the audit trail with its hashes, the outbox,
tokens and sessions — read from the file while this process holds it exclusively and written in one
transaction, so the copy is whole or absent and its audit chain is the original's, record for record:
`hitl audit verify` prints the same head on both. Rows keep their numbers (request seq, decision order,
outbox ids), and the counters behind them continue after the largest. A target that holds anything is
refused: this is a move, never a merge.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from hitl_mcp.audit import GENESIS
from hitl_mcp.config import redact
from hitl_mcp.errors import ConfigError, StoreUnavailable
from hitl_mcp.store import postgres_schema, sqlite_schema
from hitl_mcp.store.grants import COLUMNS as GRANT_COLUMNS
from hitl_mcp.store.postgres import PostgresStore
from hitl_mcp.store.postgres_connection import FAULTS, fault
from hitl_mcp.store.postgres_rows import Conn, text_in
from hitl_mcp.store.sqlite import open_reader

BATCH = 5000

Progress = Callable[[str, int, int], None]
"""Told (table, rows copied so far, rows in all) as a long copy goes on."""


@dataclass(frozen=True)
class Table:
    name: str
    select: str
    """The SQLite query, in the target's column order."""
    columns: tuple[str, ...]
    text_columns: tuple[int, ...] = ()
    """Positions of free text the target holds as JSON strings (postgres_rows.text_in)."""
    identity: str | None = None
    """The target's identity column, whose counter must continue after the copied rows."""


TABLES = (
    Table(
        "requests",
        "SELECT seq, id, tool, arguments, arguments_digest, summary, preview, status, requested_by, "
        "created_at, expires_at, updated_at, claimed_by, result, error, policy, level, escalate_at, "
        "escalated_level, original_arguments, target, effect, idempotency_key FROM requests ORDER BY seq",
        (
            "seq",
            "id",
            "tool",
            "arguments",
            "arguments_digest",
            "summary",
            "preview",
            "status",
            "requested_by",
            "created_at",
            "expires_at",
            "updated_at",
            "claimed_by",
            "result",
            "error",
            "policy",
            "level",
            "escalate_at",
            "escalated_level",
            "original_arguments",
            "target",
            "effect",
            "idempotency_key",
        ),
        text_columns=(5, 14),
        identity="seq",
    ),
    Table(
        "decisions",
        "SELECT rowid, request_id, principal, verdict, reason, decided_at, roles, level, edit FROM decisions "
        "ORDER BY rowid",
        ("id", "request_id", "principal", "verdict", "reason", "decided_at", "roles", "level", "edit"),
        text_columns=(4,),
        identity="id",
    ),
    Table(
        "audit",
        "SELECT seq, request_id, event, actor, at, details, prev_hash, hash FROM audit ORDER BY seq",
        ("seq", "request_id", "event", "actor", "at", "details", "prev_hash", "hash"),
    ),
    Table(
        "outbox",
        "SELECT id, audit_seq, request_id, event, channel, notifier, label, payload, state, attempts, "
        "created_at, next_attempt_at, claim, lease_until, last_error, delivered_at FROM outbox ORDER BY id",
        (
            "id",
            "audit_seq",
            "request_id",
            "event",
            "channel",
            "notifier",
            "label",
            "payload",
            "state",
            "attempts",
            "created_at",
            "next_attempt_at",
            "claim",
            "lease_until",
            "last_error",
            "delivered_at",
        ),
        text_columns=(14,),
        identity="id",
    ),
    # Tokens and sessions go too: a token made on the SQLite store, or a browser signed in there, still
    # counts on the PostgreSQL one.
    Table(
        "tokens",
        "SELECT id, name, principal, roles, sha256, created_at, created_by, expires_at, last_used_at, "
        "revoked_at FROM tokens ORDER BY created_at, id",
        (
            "id",
            "name",
            "principal",
            "roles",
            "sha256",
            "created_at",
            "created_by",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ),
    ),
    Table(
        "sessions",
        "SELECT sha256, principal, roles, csrf, id_token, created_at, last_seen_at, expires_at FROM sessions "
        "ORDER BY sha256",
        ("sha256", "principal", "roles", "csrf", "id_token", "created_at", "last_seen_at", "expires_at"),
    ),
    # A decision link mailed before the move still works after it (once).
    Table(
        "link_tokens",
        "SELECT sha256, request_id, principal, arguments_digest, created_at, expires_at, used_at "
        "FROM link_tokens ORDER BY sha256",
        ("sha256", "request_id", "principal", "arguments_digest", "created_at", "expires_at", "used_at"),
    ),
    # Grants: a standing approval made before the move still covers calls after it, with the uses it has
    # left, and a revoked one stays revoked.
    Table(
        "grants",
        f"SELECT {GRANT_COLUMNS} FROM grants ORDER BY created_at, id",
        tuple(column.strip() for column in GRANT_COLUMNS.split(",")),
    ),
    # The Slack messages posted about requests: a decision after the move still updates them.
    Table(
        "slack_messages",
        "SELECT channel, ts, request_id, posted_at FROM slack_messages ORDER BY posted_at, channel, ts",
        ("channel", "ts", "request_id", "posted_at"),
    ),
    # The archive checkpoints: the copied trail goes on from the last one, as the original did.
    Table(
        "archives",
        "SELECT through_seq, through_hash, from_seq, from_hash, sha256, file, before, created_at, requests, "
        "records FROM archives ORDER BY through_seq",
        (
            "through_seq",
            "through_hash",
            "from_seq",
            "from_hash",
            "sha256",
            "file",
            "before",
            "created_at",
            "requests",
            "records",
        ),
    ),
)


@dataclass(frozen=True)
class Copied:
    counts: dict[str, int]
    source_head: str
    target_head: str


# How long to wait for the store's other connections to go (a command finishing) before refusing.
EXCLUSIVE_WAIT_SECONDS = 2.0


class _Source:
    """The SQLite file, read from a worker thread while no other connection may open it.

    A snapshot alone would copy consistently, yet a server still running on the file would go on deciding and
    running requests there after the copy, and those changes would never reach the new store. So the copy
    takes SQLite's exclusive lock (locking_mode EXCLUSIVE: in WAL mode every open connection holds a shared
    lock, even idle), which refuses while any process has the store open and keeps every other one out
    until the copy ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def open(self) -> None:
        if not self.path.is_file():
            raise ConfigError(f"no store at {self.path}; HITL_DB names the SQLite store to copy")
        # A file this user cannot write cannot be locked either; nor can it be written: a snapshot will do.
        conn = _exclusive(self.path) if os.access(self.path, os.W_OK) else open_reader(self.path)
        try:
            sqlite_schema.check_readable(sqlite_schema.inspect(conn), self.path)
            if not conn.in_transaction:
                conn.execute("BEGIN")  # one snapshot for every table, however long the copy takes
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def count(self, table: str) -> int:
        assert self.conn is not None
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def head(self) -> str:
        assert self.conn is not None
        row = self.conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return GENESIS if row is None else str(row[0])

    def rows(self, table: Table) -> Iterator[list[tuple[Any, ...]]]:
        assert self.conn is not None
        cursor = self.conn.execute(table.select)
        while batch := cursor.fetchmany(BATCH):
            yield [_converted(row, table.text_columns) for row in batch]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _exclusive(path: Path) -> sqlite3.Connection:
    """A connection holding the store at `path` exclusively, in a transaction; refused with
    `StoreUnavailable` while another process has the store open."""
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode=rw",
        uri=True,
        timeout=EXCLUSIVE_WAIT_SECONDS,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as error:
        conn.close()
        if getattr(error, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
            raise
        raise StoreUnavailable(
            f"{path} is open in another process (a `hitl serve` still running on it, or a command not yet "
            "done): what it writes after the copy would be lost, so stop it first; nothing was copied"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _converted(row: Sequence[Any], text_columns: tuple[int, ...]) -> tuple[Any, ...]:
    values = list(row)
    for index in text_columns:
        values[index] = text_in(values[index])
    return tuple(values)


async def copy_to_postgres(source: Path, url: str, progress: Progress | None = None) -> Copied:
    """Copy the SQLite store at `source` into the empty database at `url` (creating its schema)."""
    reader = _Source(source)
    await anyio.to_thread.run_sync(reader.open)
    try:
        conn = await PostgresStore(url).connect()
        try:
            return await _copy(reader, conn, url, progress)
        except FAULTS as error:
            raise fault(error, url) from None
        finally:
            await conn.close()
    finally:
        await anyio.to_thread.run_sync(reader.close)


async def _copy(reader: _Source, conn: Conn, url: str, progress: Progress | None) -> Copied:
    where = redact(url)
    await _check_empty(conn, where)
    await postgres_schema.upgrade(conn, where)  # an empty schema, if it had none: still empty after a failure
    counts: dict[str, int] = {}
    async with conn.transaction():
        # Held to the commit: a server started on the target meanwhile waits rather than interleaving.
        await conn.execute("SELECT seq FROM audit_head FOR UPDATE")
        await _check_empty(conn, where)
        for table in TABLES:
            total = await anyio.to_thread.run_sync(reader.count, table.name)
            done = 0
            batches = reader.rows(table)
            while batch := await anyio.to_thread.run_sync(next, batches, None):
                await conn.copy_records_to_table(table.name, records=batch, columns=list(table.columns))
                done += len(batch)
                if progress is not None:
                    progress(table.name, done, total)
            if progress is not None and total == 0:
                progress(table.name, 0, 0)
            counts[table.name] = done
            if table.identity is not None:
                await _continue_identity(conn, table.name, table.identity)
        await conn.execute(
            "UPDATE audit_head SET (seq, hash) = (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) "
            "WHERE singleton AND EXISTS (SELECT 1 FROM audit)"
        )
        target_head = await conn.fetchval("SELECT hash FROM audit_head")
    source_head = await anyio.to_thread.run_sync(reader.head)
    return Copied(counts, source_head, str(target_head))


async def _check_empty(conn: Conn, where: str) -> None:
    found = await postgres_schema.inspect(conn)
    if found.empty:
        return
    if not found.ours:
        postgres_schema.check_ours(found, where)
    held = []
    if found.tables >= MIGRATED_TABLES:
        for table in ("requests", "decisions", "audit", "outbox"):
            rows = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            if rows:
                held.append(f"{rows} {table}")
    if held or found.version != postgres_schema.SCHEMA_VERSION:
        what = ", ".join(held) if held else f"schema {found.version}"
        raise ConfigError(
            f"--to: {where} is not empty ({what}); copy into an empty database (createdb a new one)"
        )


MIGRATED_TABLES = frozenset({"requests", "decisions", "audit", "outbox"})


async def _continue_identity(conn: Conn, table: str, column: str) -> None:
    # `setval(..., max, true)` makes the next value max + 1; an empty table starts at 1 again.
    await conn.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
        f"COALESCE((SELECT max({column}) FROM {table}), 1), (SELECT count(*) > 0 FROM {table}))"
    )

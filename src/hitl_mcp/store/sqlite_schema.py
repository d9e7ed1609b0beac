"""The SQLite store's schema, how a file is recognised as a hitl store, created or upgraded, and how
SQLite's errors read to the person or agent whose call they stopped.

Opening never takes the write lock when the file is already a current store: reading commands then work
on a read-only file and beside a process that holds the lock for a long time (WAL readers never wait on
a writer). Only creating or upgrading the schema writes, and it does so in one transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hitl_mcp.errors import ConfigError, StoreUnavailable
from hitl_mcp.store import sqlite_report

SCHEMA_VERSION = 8
# "hitl" in ASCII: marks a file as a hitl store, so a command never writes its tables into another
# program's database.
APPLICATION_ID = 0x6869746C
OUR_TABLES = frozenset({"requests", "decisions", "audit", "outbox"})
PAGE_SIZE = 8192

# Run a statement at a time (split on ";", in the transaction that checks the version): no ";" in comments.
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tool TEXT NOT NULL,
    arguments TEXT NOT NULL,
    arguments_digest TEXT NOT NULL,
    summary TEXT NOT NULL,
    preview TEXT NOT NULL,
    status TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    claimed_by TEXT,
    result TEXT,
    error TEXT,
    policy TEXT NOT NULL DEFAULT '{}',
    level INTEGER NOT NULL DEFAULT 0,
    escalate_at REAL,
    escalated_level INTEGER,
    original_arguments TEXT,
    target TEXT,
    effect TEXT,
    idempotency_key TEXT
);
-- Partial indexes keep the open queues small however many finished requests pile up beside them.
CREATE INDEX IF NOT EXISTS requests_pending ON requests (seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS requests_pending_tool ON requests (tool, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS requests_approved ON requests (updated_at) WHERE status = 'approved';
CREATE INDEX IF NOT EXISTS requests_open_expiry ON requests (expires_at)
    WHERE status IN ('pending', 'approved');
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, seq);
CREATE INDEX IF NOT EXISTS requests_escalation ON requests (escalate_at) WHERE escalate_at IS NOT NULL;
-- A retried call finds the request it repeats: by its idempotency key, or by its digest while pending.
CREATE UNIQUE INDEX IF NOT EXISTS requests_idempotency ON requests (requested_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_pending_digest ON requests (requested_by, arguments_digest)
    WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS decisions (
    request_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT,
    decided_at REAL NOT NULL,
    roles TEXT NOT NULL DEFAULT '[]',
    level INTEGER,
    edit TEXT,
    -- One decision per principal per request: a principal counts once toward a quorum.
    UNIQUE (request_id, principal)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    at REAL NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id);
-- Notifications for the delivery worker (hitl_mcp.notify), one row per event per notifier target, written
-- in the transition's transaction. `notifier` is a hash of the target, looked up in the config at delivery.
-- `payload` is the message's snapshot. `claim` and `lease_until` hold a row for one worker. (The schema is
-- split on semicolons: none in comments.)
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    audit_seq INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    event TEXT NOT NULL,
    channel TEXT NOT NULL,
    notifier TEXT NOT NULL,
    label TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    claim TEXT,
    lease_until REAL,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (audit_seq, notifier)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (id) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox (delivered_at) WHERE state = 'delivered';
-- Bearer tokens and inbox sessions (hitl_mcp.store.credentials): only the SHA-256 of each secret. A name
-- is unique among the tokens not revoked, so a revoked token's name can be used again.
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    principal TEXT NOT NULL,
    roles TEXT NOT NULL DEFAULT '[]',
    sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    expires_at REAL,
    last_used_at REAL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS sessions (
    sha256 TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    roles TEXT NOT NULL DEFAULT '[]',
    csrf TEXT NOT NULL,
    id_token TEXT,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at);
-- Decision links sent to one person (an email, a phone's push): only the SHA-256 of each link's token. A
-- link is bound to its request, its recipient and the digest of the arguments it showed. A decision made
-- with it spends it, and one made otherwise, or an edit, makes it stale.
CREATE TABLE IF NOT EXISTS link_tokens (
    sha256 TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    arguments_digest TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE INDEX IF NOT EXISTS link_tokens_request ON link_tokens (request_id);
-- The Slack messages posted about a request, so that a decision updates each of them in place.
CREATE TABLE IF NOT EXISTS slack_messages (
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    request_id TEXT NOT NULL,
    posted_at REAL NOT NULL,
    PRIMARY KEY (channel, ts)
);
CREATE INDEX IF NOT EXISTS slack_messages_request ON slack_messages (request_id);
-- One row per `hitl db archive`: the audit records after from_seq up to through_seq, with the requests and
-- decisions they were about, left the store for the file whose SHA-256 is `sha256`. The row of the largest
-- through_seq is the checkpoint the remaining trail continues from (hitl_mcp.store.archive).
CREATE TABLE IF NOT EXISTS archives (
    through_seq INTEGER PRIMARY KEY,
    through_hash TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    from_hash TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    before REAL NOT NULL,
    created_at REAL NOT NULL,
    requests INTEGER NOT NULL,
    records INTEGER NOT NULL
);
-- The report's running totals, kept by the triggers of hitl_mcp.store.sqlite_report as audit records are
-- written: counts per hour of filing (`bucket`), never a row per request. report_totals holds, by `kind`,
-- requests per tool and status (o: a tool, b status), per verdict (v: a verdict), expired (x), escalated
-- (y), approvers' decisions (a: a actor, b event) and records per event (e: a event). report_waits counts
-- the requests of an hour by their time to first decision, in the order the percentiles walk them.
-- report_buckets spans each hour's first records by seq, where a window's first hour is folded from.
CREATE TABLE IF NOT EXISTS report_totals (
    kind TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (kind, bucket, a, b)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report_waits (
    wait REAL NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (wait, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report_buckets (
    bucket INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
-- Standing approvals (hitl_mcp.grants). `uses_left` is spent by the insert of each call a grant covers,
-- in that call's transaction. `approvers` and `needs` are JSON: who approved it, with their roles, and the
-- levels of every rule its scope can reach.
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    requester TEXT NOT NULL,
    when_expr TEXT,
    any_arguments INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    uses INTEGER,
    uses_left INTEGER,
    uses_made INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    approvers TEXT NOT NULL,
    needs TEXT NOT NULL,
    reason TEXT,
    revoked_by TEXT,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS grants_active ON grants (tool, requester) WHERE state = 'active';
"""

# Statements that bring a store from the version before each key to that version; SCHEMA then adds
# whatever indexes the new columns need.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # Where a request was previewed (an action's target), whether a failure had an effect, and the
        # idempotency key its call carried. Requests filed before have none: any process may run them.
        "ALTER TABLE requests ADD COLUMN target TEXT",
        "ALTER TABLE requests ADD COLUMN effect TEXT",
        "ALTER TABLE requests ADD COLUMN idempotency_key TEXT",
    ),
    # Tokens and sessions: new tables only, which SCHEMA creates.
    3: (),
    # Decision links and Slack messages: new tables only, which SCHEMA creates.
    4: (),
    # Grants: a new table only, which SCHEMA creates.
    5: (),
    # Archives and the audit checkpoint: a new table only, which SCHEMA creates.
    6: (),
    # The report's running totals: new tables and triggers, filled once from the trail (sqlite_report).
    7: (),
    # The running totals as counts per hour instead of rows per request: the tables of 7 go, SCHEMA makes
    # the new ones and sqlite_report refills them from the trail, with this version's triggers and index.
    8: (
        "DROP TRIGGER IF EXISTS report_fold",
        "DROP TRIGGER IF EXISTS report_unfold",
        "DROP TABLE IF EXISTS report_requests",
        "DROP TABLE IF EXISTS report_events",
        "DROP TABLE IF EXISTS report_votes",
    ),
}


@dataclass(frozen=True)
class Found:
    """What a file holds, read without taking a lock."""

    version: int
    application_id: int
    tables: frozenset[str]
    journal_mode: str

    @property
    def empty(self) -> bool:
        return not self.tables and self.version == 0 and self.application_id == 0

    @property
    def ours(self) -> bool:
        # Stores of schema 1 predate the application id; they are known by their tables.
        legacy = self.application_id == 0 and self.version == 1 and self.tables >= OUR_TABLES
        return self.application_id == APPLICATION_ID or legacy

    @property
    def current(self) -> bool:
        return self.ours and self.version == SCHEMA_VERSION


def inspect(conn: sqlite3.Connection) -> Found:
    return Found(
        version=conn.execute("PRAGMA user_version").fetchone()[0],
        application_id=conn.execute("PRAGMA application_id").fetchone()[0],
        tables=frozenset(
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ),
        journal_mode=conn.execute("PRAGMA journal_mode").fetchone()[0],
    )


def check_usable(found: Found, path: Path) -> None:
    """Refuse a file that is another program's database, or a store newer than this code."""
    if found.empty:
        return
    if not found.ours:
        tables = ", ".join(sorted(found.tables)[:5]) or "none"
        raise ConfigError(
            f"HITL_DB: {path} is not a hitl store (an SQLite database with the tables {tables}); point "
            "HITL_DB at the store `hitl serve` uses, or at a new file"
        )
    if found.version > SCHEMA_VERSION:
        raise ConfigError(
            f"HITL_DB: {path} was written by a newer hitl-mcp (schema {found.version}; this one knows "
            f"{SCHEMA_VERSION}): upgrade hitl-mcp"
        )


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Make the file a current store, creating or upgrading it in one transaction; a no-op, taking no
    lock, when it already is one."""
    found = inspect(conn)
    check_usable(found, path)
    if found.empty:
        # Only a new file takes a page size (before WAL and its first table). At 8 KiB the audit records
        # and requests leave half the space unused at the end of each page that 4 KiB does: about 35 bytes
        # a request less (docs/performance.md), for 180 KiB more in an empty store.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    if found.journal_mode.lower() != "wal":
        # WAL lets readers in other processes go on while one process writes, and survives a crash of any
        # process at any moment.
        conn.execute("PRAGMA journal_mode = WAL")
    if found.current:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = inspect(conn)  # another process may have prepared it while this one waited for the lock
        check_usable(found, path)
        if not found.current:
            if not found.empty:
                for version in range(found.version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(version, ()):
                        conn.execute(statement)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            sqlite_report.install(conn, backfill=not found.empty)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def check_readable(found: Found, path: Path) -> None:
    """A read-only open needs a current store: it can neither create nor upgrade one."""
    if found.empty:
        raise ConfigError(
            f"HITL_DB: no store at {path} yet (nothing has been filed there); HITL_DB names the store file "
            "`hitl serve` uses"
        )
    check_usable(found, path)
    if not found.current:
        raise ConfigError(
            f"HITL_DB: {path} holds schema {found.version}; this hitl-mcp reads schema {SCHEMA_VERSION}. "
            "Start `hitl serve` (or run any command that writes) once to upgrade it"
        )


# SQLite's primary result codes (the low byte of an extended code) and what each means for a person.
_BUSY, _LOCKED, _FULL, _READONLY, _CANTOPEN, _PERM, _AUTH = 5, 6, 13, 8, 14, 3, 23
_CORRUPT, _NOTADB, _IOERR = 11, 26, 10


def fault(error: sqlite3.Error) -> StoreUnavailable:
    """What an SQLite error means for the caller, in words; whether it certainly wrote nothing."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in (_BUSY, _LOCKED):
        return StoreUnavailable("the store is locked by another process")
    if primary == _FULL:
        return StoreUnavailable("the disk is full")
    if primary == _READONLY:
        return StoreUnavailable("the store is read-only")
    if primary in (_PERM, _AUTH, _CANTOPEN):
        return StoreUnavailable(f"the store cannot be opened ({error})")
    if primary in (_CORRUPT, _NOTADB):
        return StoreUnavailable(f"the store is damaged or not a hitl store ({error})")
    if primary == _IOERR:
        return StoreUnavailable(
            f"the store's disk failed ({error}); the change may or may not be saved", certain=False
        )
    return StoreUnavailable(f"the store failed ({error})", certain=False)

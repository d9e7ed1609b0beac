"""The embedded default store: one SQLite file in WAL mode, shared safely by any number of processes.

Each public method runs in a worker thread, so the event loop never waits on a lock held by another
process. A read is one snapshot; a transition is one savepoint of a write transaction that it shares with
the transitions arriving at the same moment, committed once (hitl_mcp.store.sqlite_connection).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from hitl_mcp import queue_rows
from hitl_mcp.audit import COLUMNS as AUDIT_COLUMNS
from hitl_mcp.audit import GENESIS, AuditRecord
from hitl_mcp.errors import ConfigError, Effect, HitlError, NotFound, NotPending, StoreUnavailable
from hitl_mcp.grants import GRANTED
from hitl_mcp.models import AuditEvent, Request, Status, utc
from hitl_mcp.notify.outbox import ClaimedDelivery, Delivery, OutboxState, OutboxSummary
from hitl_mcp.notify.routing import Routing
from hitl_mcp.notify.settings import Notifier
from hitl_mcp.private_files import create_private

# open_reader is re-exported: the backup, transfer and admin tools open stores with it.
from hitl_mcp.queue_rows import open_reader as open_reader
from hitl_mcp.store import (
    NO_REQUEST_EVENTS,
    ClaimFor,
    Denial,
    DenialPage,
    NewRequest,
    Page,
    Planner,
    SummaryRows,
    filed_details,
    finish_details,
    level_details,
    replay,
    report_sql,
    sqlite_audit,
    sqlite_grants,
    sqlite_report,
)
from hitl_mcp.store import sqlite_schema as schema
from hitl_mcp.store.sqlite_connection import CommitCounts, Connection, GroupCommit, RoutedConnection
from hitl_mcp.store.sqlite_credentials import SQLiteCredentials
from hitl_mcp.store.sqlite_links import SQLiteLinks
from hitl_mcp.store.sqlite_rows import (
    REQUEST_COLUMNS,
    decisions_of,
    dumps,
    fetch,
    filed_of,
    request_of,
)
from hitl_mcp.store.sqlite_slack import SQLiteSlackMessages
from hitl_mcp.store.sqlite_tally import SQLiteTally

T = TypeVar("T")

Synchronous = Literal["full", "normal"]


def _audit(
    conn: sqlite3.Connection,
    request_id: str,
    event: str,
    actor: str,
    at: float,
    details: dict[str, Any] | None = None,
) -> None:
    # Chained onto the previous record inside the caller's BEGIN IMMEDIATE transaction: see hitl_mcp.audit.
    sqlite_audit.append(conn, request_id, event, actor, at, dumps(details or {}))
    _enqueue_notifications(conn, request_id, event, actor, at, details or {})


def _enqueue_notifications(
    conn: sqlite3.Connection, request_id: str, event: str, actor: str, at: float, details: dict[str, Any]
) -> None:
    """One outbox row per notifier that wants this event, in the transition's transaction (see
    hitl_mcp.notify); the request is read here, so the message shows it as this transition leaves it."""
    routing = conn.routing if isinstance(conn, RoutedConnection) else None
    if routing is None or not routing.wants(event):
        return
    audit_seq: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    request = fetch(conn, request_id)  # None for an event of no request (an upstream's tool-changed)
    entries = routing.entries_for(event, request, actor, at, details, audit_seq)
    # Due at once (next_attempt_at 0), whatever the clock of the process that will send it says.
    conn.executemany(
        "INSERT OR IGNORE INTO outbox (audit_seq, request_id, event, channel, notifier, label, payload, "
        "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
        [(audit_seq, request_id, event, e.channel, e.notifier, e.label, e.payload, at) for e in entries],
    )


# `targets` is a JSON object from tool name to that tool's target (as stored): a request runs only where
# its tool's target is the one it was filed against. (json_each yields an object's keys and values.)
_ON_TARGET = (
    "(target IS NULL OR EXISTS (SELECT 1 FROM json_each(?) AS t "
    "WHERE t.key = requests.tool AND t.value = requests.target))"
)


def _claim(conn: sqlite3.Connection, request_id: str, claim: ClaimFor, now: float) -> Any:
    """approved → executing for `claim.worker`, with its audit record; the row as claimed, or None."""
    # A request filed before targets were recorded has none, and runs wherever it is approved.
    on_target = "" if claim.targets is None else f" AND {_ON_TARGET}"
    params: tuple[Any, ...] = (claim.worker, now, request_id, now)
    row = conn.execute(
        f"UPDATE requests SET status = 'executing', claimed_by = ?, updated_at = ? "
        f"WHERE id = ? AND status = 'approved' AND expires_at > ?{on_target} "
        f"RETURNING {REQUEST_COLUMNS}",
        params if claim.targets is None else (*params, claim.targets),
    ).fetchone()
    if row is not None:
        _audit(conn, request_id, "claimed", claim.worker, now)
    return row


def _denied_where(tool: str | None, cursor: str | None) -> tuple[str, list[Any]]:
    where = "event = 'denied' AND seq > ?"
    params: list[Any] = [int(cursor) if cursor else 0]
    if tool is not None:
        where += " AND json_extract(details, '$.tool') = ?"
        params.append(tool)
    return where, params


def _denial(seq: int, request_id: str, actor: str, at: float, details: str) -> Denial:
    found = json.loads(details)
    return Denial(
        request_id=request_id,
        tool=str(found.get("tool", "")),
        requested_by=actor,
        at=at,
        policy=str(found.get("policy", "")),
        arguments_digest=found.get("arguments_digest"),
    )


def _repeated(conn: sqlite3.Connection, request: NewRequest) -> Request | None:
    """The request this one repeats: the same idempotency key from the same principal (whatever became of
    it), or else, within the dedup window, a pending request of that principal with the same digest."""
    if request.idempotency_key is not None:
        row = conn.execute(
            "SELECT id FROM requests WHERE requested_by = ? AND idempotency_key = ?",
            (request.requested_by, request.idempotency_key),
        ).fetchone()
    elif request.dedup_since is not None and not request.auto_approved:
        row = conn.execute(
            "SELECT id FROM requests WHERE requested_by = ? AND arguments_digest = ? AND status = 'pending' "
            "AND created_at >= ? AND expires_at > ? ORDER BY seq DESC LIMIT 1",
            (request.requested_by, request.arguments_digest, request.dedup_since, request.created_at),
        ).fetchone()
    else:
        return None
    return None if row is None else fetch(conn, row[0])


# Audit records read per trip to the worker thread while streaming the trail.
AUDIT_BATCH = 2000


# changed_since's SQL list of them, written once.
_NO_REQUEST = report_sql.quoted_list(NO_REQUEST_EVENTS)


class SQLiteStore(
    SQLiteCredentials, SQLiteLinks, SQLiteSlackMessages, SQLiteTally, sqlite_grants.SQLiteGrants
):
    """`readonly` opens an existing, current store without ever writing to it: what reading commands use,
    so they work on a read-only file and never take the write lock. `any_schema` (with `readonly`) skips
    the schema check, so `hitl audit` can examine whatever trail a file holds — one damaged, foreign or
    written by a newer version included."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = "full",
        busy_timeout: float = 5.0,
        notify: Sequence[Notifier] = (),
        readonly: bool = False,
        any_schema: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._any_schema = any_schema and readonly
        self._routing = Routing(notify) if notify else None
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        # Writes go through one connection, reads through another: a write waiting for another process's
        # lock never holds up a read, which WAL serves from the last commit without waiting.
        self._writer: GroupCommit | None = None
        self._reader: Connection | None = None
        self._watch: sqlite3.Connection | None = None

    # -- connection ------------------------------------------------------------------------------

    def _connect(self, *, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
        mode = "ro&immutable=1" if immutable else "ro" if readonly else "rwc"
        conn = sqlite3.connect(
            f"{self.path.as_uri()}?mode={mode}",
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=RoutedConnection,
        )
        try:
            conn.routing = self._routing
            if not readonly:
                conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = open_reader(self.path, timeout=self._busy_timeout, factory=RoutedConnection)
        conn.routing = self._routing  # type: ignore[attr-defined]
        return conn

    def _open_sync(self) -> None:
        if self.path.is_dir():
            raise ConfigError(
                f"HITL_DB: {self.path} is a folder; name a store file in it, e.g. {self.path / 'hitl.db'}"
            )
        if self.readonly and not self.path.is_file():
            raise ConfigError(
                f"HITL_DB: no store at {self.path} yet (nothing has been filed there); HITL_DB names the "
                "store file `hitl serve` uses"
            )
        opened: list[sqlite3.Connection] = []
        try:
            if not self.readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                create_private(self.path)  # before SQLite makes it readable by all, and its -wal and -shm
                opened.append(first := self._connect(readonly=False))
                schema.prepare(first, self.path)
            opened.append(reader := self._connect_reader())
            if self.readonly and not self._any_schema:
                schema.check_readable(schema.inspect(reader), self.path)
            opened.append(watch := self._connect_reader())
        except (sqlite3.Error, OSError) as error:
            for conn in opened:
                conn.close()
            raise self._unopenable(error) from None
        except BaseException:
            for conn in opened:
                conn.close()
            raise
        self._writer = None if self.readonly else GroupCommit(opened[0])
        self._reader = Connection(reader)
        self._watch = watch

    def _unopenable(self, error: sqlite3.Error | OSError) -> HitlError:
        code = getattr(error, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return ConfigError(f"HITL_DB: {self.path} is not a hitl store ({error})")
        # SQLite says only that it cannot open the file; the file system can tell why.
        unwritable = not os.access(self.path.parent, os.W_OK) or (
            self.path.exists() and not os.access(self.path, os.W_OK)
        )
        if not self.readonly and unwritable:
            return StoreUnavailable(f"{self.path}: the store is read-only ({error})")
        if isinstance(error, OSError):
            return StoreUnavailable(f"{self.path}: the store cannot be opened ({error})")
        fault = schema.fault(error)
        return StoreUnavailable(f"{self.path}: {fault.reason}", certain=fault.certain)

    @property
    def commit_counts(self) -> CommitCounts:
        """How many transitions shared how many durable commits since the store opened."""
        return self._writer.counts if self._writer is not None else CommitCounts()

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    async def close(self) -> None:
        # Readers first: the last connection to close checkpoints the WAL and removes it, which only a
        # writing one can, so the file is left whole for read-only media and plain `sqlite3`.
        if self._watch is not None:
            self._watch.close()
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = self._watch = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read: one snapshot of the last commit, however many statements `fn` runs."""
        reader = self._reader
        if reader is None:
            raise RuntimeError("the store is not open")

        def snapshot(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await reader.run(snapshot)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        if writer is None:
            if self.readonly:
                raise StoreUnavailable("this command opened the store read-only")
            raise RuntimeError("the store is not open")

        return await writer.run(fn)

    # -- transitions -----------------------------------------------------------------------------

    async def insert(self, request: NewRequest) -> Request:
        status = Status.APPROVED if request.auto_approved else Status.PENDING
        policy = request.policy.model_dump_json()

        def insert(conn: sqlite3.Connection) -> Request:
            # Looked for inside the write transaction, so two retries racing each other file one request.
            repeated = _repeated(conn, request)
            if repeated is not None:
                return repeated
            # Spent before anything is written: a grant that no longer covers calls files nothing here.
            spent = sqlite_grants.spend(conn, request.grant, request.created_at) if request.grant else None
            conn.execute(
                "INSERT INTO requests (id, tool, arguments, arguments_digest, summary, preview, status, "
                "requested_by, created_at, expires_at, updated_at, policy, escalate_at, target, "
                "idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.request_id,
                    request.tool,
                    dumps(request.arguments),
                    request.arguments_digest,
                    request.summary,
                    dumps(request.preview),
                    status.value,
                    request.requested_by,
                    request.created_at,
                    request.expires_at,
                    request.created_at,
                    policy,
                    request.escalate_at,
                    request.target,
                    request.idempotency_key,
                ),
            )
            _audit(
                conn,
                request.request_id,
                "filed",
                request.requested_by,
                request.created_at,
                filed_details(request),
            )
            if spent is not None:
                details = {**spent, "tool": request.tool, "policy": request.policy.describe()}
                _audit(conn, request.request_id, GRANTED, "grant", request.created_at, details)
            elif request.auto_approved:
                _audit(
                    conn,
                    request.request_id,
                    "policy-auto-approved",
                    "policy",
                    request.created_at,
                    {"policy": request.policy.describe()},
                )
            return filed_of(request, status, policy)

        return await self._write(insert)

    async def record_event(
        self, event_id: str, event: str, actor: str, details: dict[str, Any], now: float
    ) -> None:
        await self._write(lambda conn: _audit(conn, event_id, event, actor, now, details))

    async def mark_unknown(self, request_id: str, worker: str, reason: str, now: float) -> Request | None:
        def mark(conn: sqlite3.Connection) -> Request | None:
            # updated_at stays: on an executing request it says when it was claimed.
            changed = conn.execute(
                "UPDATE requests SET effect = 'unknown', error = ? "
                "WHERE id = ? AND status = 'executing' AND claimed_by = ?",
                (reason, request_id, worker),
            ).rowcount
            if not changed:
                return None
            _audit(conn, request_id, "outcome-unknown", worker, now, {"error": reason})
            return fetch(conn, request_id)

        return await self._write(mark)

    async def decide(
        self, request_id: str, plan: Planner, now: float, claim: ClaimFor | None = None
    ) -> Request:
        def decide(conn: sqlite3.Connection) -> Request:
            # The plan reads the row inside this IMMEDIATE transaction, which holds the write lock: no
            # other process can change the request between what the plan saw and what is written here.
            current = fetch(conn, request_id)
            if current is None:
                raise NotFound(f"no request has id {request_id!r}")
            decision = plan(current)
            edit = decision.edit
            if edit is not None:
                conn.execute(
                    "UPDATE requests SET original_arguments = COALESCE(original_arguments, arguments), "
                    "arguments = ?, arguments_digest = ?, summary = ?, preview = ?, policy = ? "
                    "WHERE id = ? AND status = 'pending' AND arguments_digest = ?",
                    (
                        dumps(edit.arguments),
                        edit.arguments_digest,
                        edit.summary,
                        dumps(edit.preview),
                        edit.policy.model_dump_json(),
                        request_id,
                        edit.based_on_digest,
                    ),
                )
                changes = {name: change.model_dump(mode="json") for name, change in edit.changes.items()}
                _audit(conn, request_id, "edited", decision.principal, now, {"changes": changes})
            changed = conn.execute(
                "UPDATE requests SET status = ?, level = ?, "
                "escalate_at = CASE WHEN ? THEN escalate_at ELSE ? END, updated_at = ? "
                "WHERE id = ? AND status = 'pending' AND expires_at > ?",
                (
                    decision.status.value,
                    -1 if decision.waiting_on is None else decision.waiting_on,
                    decision.keep_escalation,
                    decision.escalate_at,
                    now,
                    request_id,
                    now,
                ),
            ).rowcount
            if not changed:
                raise NotPending(f"request {request_id} changed while deciding; read it again")
            if not decision.confirmation:
                conn.execute(
                    "INSERT INTO decisions "
                    "(request_id, principal, verdict, reason, decided_at, roles, level, edit) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        request_id,
                        decision.principal,
                        decision.verdict,
                        decision.reason,
                        now,
                        dumps(list(decision.roles)),
                        decision.level,
                        None
                        if edit is None
                        else dumps({k: v.model_dump(mode="json") for k, v in edit.changes.items()}),
                    ),
                )
            details: dict[str, Any] = {**level_details(decision.level), "status": decision.status.value}
            if decision.reason:
                details["reason"] = decision.reason
            event = "approved" if decision.verdict == "approve" else "rejected"
            if decision.confirmation:
                details["confirmation"] = True
                event = "confirmed" if decision.verdict == "approve" else "rejected"
            _audit(conn, request_id, event, decision.principal, now, details)
            if claim is not None and decision.status is Status.APPROVED:
                _claim(conn, request_id, claim, now)
            updated = fetch(conn, request_id)
            assert updated is not None
            return updated

        return await self._write(decide)

    async def escalate_due(self, now: float) -> list[str]:
        def escalate(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "UPDATE requests SET escalate_at = NULL, escalated_level = level, updated_at = ? "
                "WHERE status = 'pending' AND escalate_at <= ? RETURNING id, level",
                (now, now),
            ).fetchall()
            for request_id, level in rows:
                _audit(conn, request_id, "escalated", "gate", now, level_details(level))
            return [row[0] for row in rows]

        return await self._write(escalate)

    async def cancel(self, request_id: str, principal: str, now: float) -> bool:
        def cancel(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                "UPDATE requests SET status = 'cancelled', updated_at = ? "
                # Names are case-folded now; a request filed before that may spell its requester otherwise.
                "WHERE id = ? AND status = 'pending' AND requested_by = ? COLLATE NOCASE",
                (now, request_id, principal),
            ).rowcount
            if changed:
                _audit(conn, request_id, "cancelled", principal, now)
            return bool(changed)

        return await self._write(cancel)

    async def claim(
        self, request_id: str, worker: str, now: float, targets: str | None = None
    ) -> Request | None:
        def claim(conn: sqlite3.Connection) -> Request | None:
            row = _claim(conn, request_id, ClaimFor(worker, targets), now)
            if row is None:
                return None
            return request_of(row, decisions_of(conn, [request_id]).get(request_id, []))

        return await self._write(claim)

    async def retry(self, request_id: str, principal: str, now: float) -> Request | None:
        def retry(conn: sqlite3.Connection) -> Request | None:
            row = conn.execute(
                "UPDATE requests SET status = 'approved', updated_at = ?, result = NULL, error = NULL, "
                "effect = NULL, claimed_by = NULL WHERE id = ? AND status = 'failed' AND effect = 'none' "
                "AND expires_at > ? RETURNING error",
                (now, request_id, now),
            ).fetchone()
            if row is None:
                return None
            _audit(conn, request_id, "retried", principal, now, {"previous_error": row[0]})
            return fetch(conn, request_id)

        return await self._write(retry)

    async def finish(
        self,
        request_id: str,
        status: Status,
        actor: str,
        result: dict[str, Any] | None,
        error: str | None,
        now: float,
        details: dict[str, Any] | None = None,
        *,
        effect: Effect | None = None,
    ) -> Request | None:
        audited = finish_details(error, effect, details)

        def finish(conn: sqlite3.Connection) -> Request | None:
            changed = conn.execute(
                "UPDATE requests SET status = ?, result = ?, error = ?, effect = ?, updated_at = ? "
                "WHERE id = ? AND status = 'executing'",
                (status.value, None if result is None else dumps(result), error, effect, now, request_id),
            ).rowcount
            if changed:
                _audit(conn, request_id, status.value, actor, now, audited or None)
            return fetch(conn, request_id) if changed else None

        return await self._write(finish)

    async def expire_overdue(self, now: float, limit: int = 500) -> list[str]:
        def expire(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "UPDATE requests SET status = 'expired', updated_at = ? WHERE seq IN ("
                "  SELECT seq FROM requests WHERE status IN ('pending', 'approved') AND expires_at <= ?"
                "  LIMIT ?) RETURNING id",
                (now, now, limit),
            ).fetchall()
            ids = [row[0] for row in rows]
            for request_id in ids:
                _audit(conn, request_id, "expired", "gate", now)
            return ids

        return await self._write(expire)

    # -- reads -----------------------------------------------------------------------------------

    async def get(self, request_id: str) -> Request | None:
        return await self._run(lambda conn: fetch(conn, request_id))

    async def match_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        # GLOB is case-sensitive, so SQLite turns a literal prefix into a range scan of the unique index;
        # the caller has already refused any character that is not part of an id.
        return await self._run(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM requests WHERE id GLOB ? ORDER BY id LIMIT ?", (prefix + "*", limit)
                )
            ]
        )

    async def page(
        self, statuses: Sequence[Status] | None, tool: str | None, limit: int, cursor: str | None
    ) -> Page:
        def page(conn: sqlite3.Connection) -> Page:
            rows, next_cursor = queue_rows.page_rows(conn, REQUEST_COLUMNS, statuses, tool, limit, cursor)
            decisions = decisions_of(conn, [row[1] for row in rows])
            return Page([request_of(row, decisions.get(row[1], [])) for row in rows], next_cursor)

        return await self._run(page)

    async def summaries(
        self, statuses: Sequence[Status] | None, tool: str | None, limit: int, cursor: str | None
    ) -> SummaryRows:
        def summaries(conn: sqlite3.Connection) -> SummaryRows:
            return SummaryRows(*queue_rows.summary_page(conn, statuses, tool, limit, cursor))

        return await self._run(summaries)

    async def count(self, statuses: Sequence[Status] | None, tool: str | None, cursor: str | None) -> int:
        return await self._run(lambda conn: queue_rows.count_after(conn, statuses, tool, cursor))

    async def denials(self, tool: str | None, limit: int, cursor: str | None) -> DenialPage:
        where, params = _denied_where(tool, cursor)

        def denials(conn: sqlite3.Connection) -> DenialPage:
            rows = conn.execute(
                f"SELECT seq, request_id, actor, at, details FROM audit WHERE {where} ORDER BY seq LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            return DenialPage([_denial(*row) for row in rows], str(rows[-1][0]) if more else None)

        return await self._run(denials)

    async def count_denials(self, tool: str | None, cursor: str | None) -> int:
        where, params = _denied_where(tool, cursor)
        return await self._run(
            lambda conn: int(conn.execute(f"SELECT count(*) FROM audit WHERE {where}", params).fetchone()[0])
        )

    async def approved_unclaimed(
        self, decided_before: float, limit: int = 100, targets: str | None = None
    ) -> list[str]:
        on_target = "" if targets is None else f" AND {_ON_TARGET}"
        params: tuple[Any, ...] = (decided_before,) + (() if targets is None else (targets,)) + (limit,)
        return await self._run(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM requests WHERE status = 'approved' AND updated_at < ?{on_target} "
                    "ORDER BY updated_at LIMIT ?",
                    params,
                )
            ]
        )

    async def audit_trail(self, request_id: str) -> list[AuditEvent]:
        def trail(conn: sqlite3.Connection) -> list[AuditEvent]:
            return [
                AuditEvent(
                    seq=seq, request_id=rid, event=event, actor=actor, at=utc(at), details=json.loads(details)
                )
                for seq, rid, event, actor, at, details in conn.execute(
                    "SELECT seq, request_id, event, actor, at, details FROM audit "
                    "WHERE request_id = ? ORDER BY seq",
                    (request_id,),
                )
            ]

        return await self._run(trail)

    async def changed_since(self, audit_seq: int | None) -> tuple[list[str], int]:
        def changed(conn: sqlite3.Connection) -> tuple[list[str], int]:
            if audit_seq is None:
                return [], conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0]
            rows = conn.execute(
                f"SELECT request_id, MAX(seq), MAX(event NOT IN {_NO_REQUEST}) "
                "FROM audit WHERE seq > ? GROUP BY request_id",
                (audit_seq,),
            ).fetchall()
            newest = max((row[1] for row in rows), default=audit_seq)
            # A denial or a passed call leaves no request behind to read: nothing to tell subscribers.
            return [row[0] for row in rows if row[2]], newest

        return await self._run(changed)

    async def audit_records(
        self, *, since: float | None = None, until: float | None = None, request_id: str | None = None
    ) -> AsyncIterator[AuditRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("request_id = ?", request_id), ("at >= ?", since), ("at < ?", until)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit {where}ORDER BY seq"
        # A connection of its own, holding one read snapshot for the whole walk however long it takes: WAL
        # writers carry on meanwhile, and the reads of the store's other callers are not held up.
        try:
            conn = await anyio.to_thread.run_sync(self._connect_reader)
        except sqlite3.Error as error:
            raise self._unreadable(error) from None
        try:

            def start() -> sqlite3.Cursor:
                conn.execute("BEGIN")
                return conn.execute(sql, params)

            try:
                cursor = await anyio.to_thread.run_sync(start)
                while batch := await anyio.to_thread.run_sync(cursor.fetchmany, AUDIT_BATCH):
                    for row in batch:
                        yield AuditRecord.from_row(row)
            except sqlite3.Error as error:
                raise self._unreadable(error) from None
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close)

    def _unreadable(self, error: sqlite3.Error) -> HitlError:
        return HitlError(f"cannot read the audit trail in {self.path}: {error}")

    async def filed_page(self, after: int, since: float | None, limit: int) -> list[replay.Filed]:
        sql = replay.sql("sqlite", since is not None)
        params = (after, limit) if since is None else (after, since, limit)
        return await self._run(lambda conn: [replay.Filed(*row) for row in conn.execute(sql, params)])

    async def report_rows(self, since: float | None = None) -> report_sql.ReportRows:
        if since is None:
            # The running totals summed: a fraction of a millisecond, on the store's reader like any read.
            return await self._run(lambda conn: sqlite_report.read(conn, None))

        # A window folds its first hour from the trail, which a busy hour makes long: on a connection of its
        # own, like `audit_records`, so it does not hold up the store's other reads.
        def run() -> report_sql.ReportRows:
            conn = self._connect_reader()
            try:
                conn.execute("BEGIN")
                return sqlite_report.read(conn, since)
            finally:
                conn.close()

        try:
            return await anyio.to_thread.run_sync(run)
        except sqlite3.Error as error:
            raise self._unreadable(error) from None

    async def audit_head(self) -> tuple[int, str]:
        seq, head = await self._run(sqlite_audit.head)
        return seq, head if head is not None else GENESIS

    async def audit_request_ids(self, prefix: str, limit: int = 2) -> list[str]:
        # GLOB with a literal prefix is a range scan of the request_id index; callers refuse wildcards.
        return await self._run(
            lambda conn: [
                str(row[0])
                for row in conn.execute(
                    "SELECT DISTINCT request_id FROM audit WHERE request_id GLOB ? "
                    "ORDER BY request_id LIMIT ?",
                    (prefix + "*", limit),
                )
            ]
        )

    def _watching(self) -> sqlite3.Connection:
        if self._watch is None:
            raise RuntimeError("the store is not open")
        return self._watch

    async def change_counter(self) -> int:
        watch = self._watching()
        # data_version moves when another connection commits; it reads shared memory only, so it is
        # cheap enough to ask on the event loop itself.
        value: int = watch.execute("PRAGMA data_version").fetchone()[0]
        return value

    # -- notification outbox (hitl_mcp.notify.outbox describes the states and the claim) ------------

    async def outbox_next_due(self) -> float | None:
        # A read, not a claim: an idle worker asks this after every commit without taking the write lock.
        def due(conn: sqlite3.Connection) -> float | None:
            value: float | None = conn.execute(
                "SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM outbox "
                "WHERE state = 'pending'"
            ).fetchone()[0]
            return value

        return await self._run(due)

    async def outbox_claim(
        self, worker: str, now: float, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]:
        claim = f"{worker}:{secrets.token_hex(8)}"

        def take(conn: sqlite3.Connection) -> list[ClaimedDelivery]:
            rows = conn.execute(
                "UPDATE outbox SET claim = ?, lease_until = ?, attempts = attempts + 1 WHERE id IN ("
                "  SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
                "  AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_attempt_at, id LIMIT ?) "
                "RETURNING id, request_id, event, channel, notifier, label, payload, attempts",
                (claim, now + lease_seconds, now, now, limit),
            ).fetchall()
            return [
                ClaimedDelivery(
                    row_id=row_id,
                    claim=claim,
                    request_id=request_id,
                    event=event,
                    channel=channel,
                    notifier=notifier,
                    label=label,
                    payload=json.loads(payload),
                    attempts=attempts,
                )
                for row_id, request_id, event, channel, notifier, label, payload, attempts in sorted(rows)
            ]

        return await self._write(take)

    async def outbox_delivered(self, row_id: int, claim: str, now: float) -> bool:
        return await self._write(
            lambda conn: bool(
                conn.execute(
                    "UPDATE outbox SET state = 'delivered', delivered_at = ?, claim = NULL, "
                    "lease_until = NULL WHERE id = ? AND claim = ? AND state = 'pending'",
                    (now, row_id, claim),
                ).rowcount
            )
        )

    async def outbox_failed(
        self, row_id: int, claim: str, error: str, now: float, retry_at: float | None
    ) -> bool:
        return await self._write(
            lambda conn: bool(
                conn.execute(
                    "UPDATE outbox SET state = ?, next_attempt_at = ?, last_error = ?, claim = NULL, "
                    "lease_until = NULL WHERE id = ? AND claim = ? AND state = 'pending'",
                    (
                        "dead" if retry_at is None else "pending",
                        now if retry_at is None else retry_at,
                        error,
                        row_id,
                        claim,
                    ),
                ).rowcount
            )
        )

    async def outbox_release(self, row_id: int, claim: str) -> bool:
        return await self._write(
            lambda conn: bool(
                conn.execute(
                    "UPDATE outbox SET claim = NULL, lease_until = NULL "
                    "WHERE id = ? AND claim = ? AND state = 'pending'",
                    (row_id, claim),
                ).rowcount
            )
        )

    async def outbox_prune(self, delivered_before: float) -> int:
        """Forget deliveries made before `delivered_before`: the audit trail still holds their events."""
        return await self._write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?", (delivered_before,)
                ).rowcount
            )
        )

    async def outbox_summary(self, limit: int) -> OutboxSummary:
        columns = (
            "id, request_id, event, channel, label, state, attempts, created_at, next_attempt_at, last_error"
        )

        def summary(conn: sqlite3.Connection) -> OutboxSummary:
            counts: dict[OutboxState, int] = {"pending": 0, "delivered": 0, "dead": 0}
            for state, count in conn.execute("SELECT state, count(*) FROM outbox GROUP BY state"):
                counts[state] = count
            dead = conn.execute(
                f"SELECT {columns} FROM outbox WHERE state = 'dead' ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            failing = conn.execute(
                f"SELECT {columns} FROM outbox WHERE state = 'pending' AND last_error IS NOT NULL "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return OutboxSummary(
                counts=counts,
                dead=[Delivery(*row) for row in dead],
                failing=[Delivery(*row) for row in failing],
            )

        return await self._run(summary)

    async def outbox_retry(self, row_ids: list[int] | None, now: float) -> list[int]:
        def retry(conn: sqlite3.Connection) -> list[int]:
            # The last error stays until the next attempt overwrites it or succeeds.
            sql = "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ? "
            sql += "WHERE state = 'dead'"
            params: list[Any] = [now]
            if row_ids is not None:
                sql += f" AND id IN ({', '.join('?' for _ in row_ids)})"
                params.extend(row_ids)
            return sorted(row[0] for row in conn.execute(sql + " RETURNING id", params))

        return await self._write(retry)

"""The embedded default store: one SQLite file in WAL mode, shared safely by any number of processes.

Each public method runs one whole transaction in a worker thread, so the event loop never waits on a
lock held by another process, and a transition costs one thread hop and one commit.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from hitl_mcp.errors import NotFound, NotPending
from hitl_mcp.models import AuditEvent, Decision, Request, Status, approval_state, utc
from hitl_mcp.notify.outbox import ClaimedDelivery, Delivery, OutboxState, OutboxSummary
from hitl_mcp.notify.routing import Routing
from hitl_mcp.notify.settings import Notifier
from hitl_mcp.policy import Snapshot
from hitl_mcp.store import NewRequest, Page, Planner

T = TypeVar("T")

Synchronous = Literal["full", "normal"]

SCHEMA_VERSION = 1

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
    original_arguments TEXT
);
-- Partial indexes keep the open queues small however many finished requests pile up beside them.
CREATE INDEX IF NOT EXISTS requests_pending ON requests (seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS requests_pending_tool ON requests (tool, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS requests_approved ON requests (updated_at) WHERE status = 'approved';
CREATE INDEX IF NOT EXISTS requests_open_expiry ON requests (expires_at)
    WHERE status IN ('pending', 'approved');
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, seq);
CREATE INDEX IF NOT EXISTS requests_escalation ON requests (escalate_at) WHERE escalate_at IS NOT NULL;
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
"""

REQUEST_COLUMNS = (
    "seq, id, tool, arguments, arguments_digest, summary, preview, status, requested_by, "
    "created_at, expires_at, updated_at, result, error, policy, level, escalated_level, original_arguments, "
    "claimed_by"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _audit(
    conn: sqlite3.Connection,
    request_id: str,
    event: str,
    actor: str,
    at: float,
    details: dict[str, Any] | None = None,
) -> None:
    # Chained onto the previous record inside the caller's BEGIN IMMEDIATE transaction: see hitl_mcp.audit.
    # Imported here to keep this change inside the one function (a cached module lookup, well under a µs).
    from hitl_mcp.audit import append

    append(conn, request_id, event, actor, at, _dumps(details or {}))
    _enqueue_notifications(conn, request_id, event, actor, at, details or {})


class _Connection(sqlite3.Connection):
    """A connection that carries the store's notification routing to `_audit`, which sees only `conn`."""

    routing: Routing | None = None


def _enqueue_notifications(
    conn: sqlite3.Connection, request_id: str, event: str, actor: str, at: float, details: dict[str, Any]
) -> None:
    """One outbox row per notifier that wants this event, in the transition's transaction (see
    hitl_mcp.notify); the request is read here, so the message shows it as this transition leaves it."""
    routing = conn.routing if isinstance(conn, _Connection) else None
    if routing is None or not routing.wants(event):
        return
    audit_seq: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    request = _fetch(conn, request_id)
    if request is None:
        return
    entries = routing.route(event, request, actor, at, details, audit_seq)
    # Due at once (next_attempt_at 0), whatever the clock of the process that will send it says.
    conn.executemany(
        "INSERT OR IGNORE INTO outbox (audit_seq, request_id, event, channel, notifier, label, payload, "
        "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
        [(audit_seq, request_id, event, e.channel, e.notifier, e.label, e.payload, at) for e in entries],
    )


class SQLiteStore:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = "full",
        busy_timeout: float = 30.0,
        notify: Sequence[Notifier] = (),
    ) -> None:
        self.path = path
        self._routing = Routing(notify) if notify else None
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._watch: sqlite3.Connection | None = None
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    # -- connection ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        conn.routing = self._routing
        conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        # WAL lets readers in other processes go on while one process writes, and survives a crash of
        # any process at any moment; switching needs no lock held by others, so do it before anything.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} was written by a newer hitl-mcp (schema {version}, this one knows "
                    f"{SCHEMA_VERSION}); upgrade hitl-mcp"
                )
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn
        self._watch = self._connect()

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    async def close(self) -> None:
        async with self._lock:
            for conn in (self._conn, self._watch):
                if conn is not None:
                    conn.close()
            self._conn = self._watch = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the store is not open")
            return await anyio.to_thread.run_sync(fn, conn, limiter=self._limiter)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def transaction(conn: sqlite3.Connection) -> T:
            # IMMEDIATE takes the write lock up front, so the conditional UPDATE never meets a
            # concurrent writer half-way and never needs a retry.
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcome = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return outcome

        return await self._run(transaction)

    # -- transitions -----------------------------------------------------------------------------

    async def insert(self, request: NewRequest) -> Request:
        status = Status.APPROVED if request.auto_approved else Status.PENDING

        def insert(conn: sqlite3.Connection) -> Request:
            conn.execute(
                "INSERT INTO requests (id, tool, arguments, arguments_digest, summary, preview, status, "
                "requested_by, created_at, expires_at, updated_at, policy, escalate_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.request_id,
                    request.tool,
                    _dumps(request.arguments),
                    request.arguments_digest,
                    request.summary,
                    _dumps(request.preview),
                    status.value,
                    request.requested_by,
                    request.created_at,
                    request.expires_at,
                    request.created_at,
                    request.policy.model_dump_json(),
                    request.escalate_at,
                ),
            )
            _audit(
                conn,
                request.request_id,
                "filed",
                request.requested_by,
                request.created_at,
                {"tool": request.tool, "arguments_digest": request.arguments_digest},
            )
            if request.auto_approved:
                _audit(
                    conn,
                    request.request_id,
                    "policy-auto-approved",
                    "policy",
                    request.created_at,
                    {"policy": request.policy.describe()},
                )
            filed = _fetch(conn, request.request_id)
            assert filed is not None
            return filed

        return await self._write(insert)

    async def record_denial(
        self, request_id: str, tool: str, principal: str, details: dict[str, Any], now: float
    ) -> None:
        await self._write(
            lambda conn: _audit(conn, request_id, "denied", principal, now, {"tool": tool, **details})
        )

    async def decide(self, request_id: str, plan: Planner, now: float) -> Request:
        def decide(conn: sqlite3.Connection) -> Request:
            # The plan reads the row inside this IMMEDIATE transaction, which holds the write lock: no
            # other process can change the request between what the plan saw and what is written here.
            current = _fetch(conn, request_id)
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
                        _dumps(edit.arguments),
                        edit.arguments_digest,
                        edit.summary,
                        _dumps(edit.preview),
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
                    _dumps(list(decision.roles)),
                    decision.level,
                    None
                    if edit is None
                    else _dumps({k: v.model_dump(mode="json") for k, v in edit.changes.items()}),
                ),
            )
            details: dict[str, Any] = {"level": decision.level, "status": decision.status.value}
            if decision.reason:
                details["reason"] = decision.reason
            event = "approved" if decision.verdict == "approve" else "rejected"
            _audit(conn, request_id, event, decision.principal, now, details)
            updated = _fetch(conn, request_id)
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
                _audit(conn, request_id, "escalated", "gate", now, {"level": level})
            return [row[0] for row in rows]

        return await self._write(escalate)

    async def cancel(self, request_id: str, principal: str, now: float) -> bool:
        def cancel(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                "UPDATE requests SET status = 'cancelled', updated_at = ? "
                "WHERE id = ? AND status = 'pending' AND requested_by = ?",
                (now, request_id, principal),
            ).rowcount
            if changed:
                _audit(conn, request_id, "cancelled", principal, now)
            return bool(changed)

        return await self._write(cancel)

    async def claim(self, request_id: str, worker: str, now: float) -> Request | None:
        def claim(conn: sqlite3.Connection) -> Request | None:
            row = conn.execute(
                f"UPDATE requests SET status = 'executing', claimed_by = ?, updated_at = ? "
                f"WHERE id = ? AND status = 'approved' AND expires_at > ? RETURNING {REQUEST_COLUMNS}",
                (worker, now, request_id, now),
            ).fetchone()
            if row is None:
                return None
            _audit(conn, request_id, "claimed", worker, now)
            return _request(row, _decisions(conn, [request_id]).get(request_id, []))

        return await self._write(claim)

    async def finish(
        self,
        request_id: str,
        status: Status,
        actor: str,
        result: dict[str, Any] | None,
        error: str | None,
        now: float,
        details: dict[str, Any] | None = None,
    ) -> Request | None:
        audited = {**({"error": error} if error else {}), **(details or {})}

        def finish(conn: sqlite3.Connection) -> Request | None:
            changed = conn.execute(
                "UPDATE requests SET status = ?, result = ?, error = ?, updated_at = ? "
                "WHERE id = ? AND status = 'executing'",
                (status.value, None if result is None else _dumps(result), error, now, request_id),
            ).rowcount
            if changed:
                _audit(conn, request_id, status.value, actor, now, audited or None)
            return _fetch(conn, request_id) if changed else None

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
        return await self._run(lambda conn: _fetch(conn, request_id))

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
        after = int(cursor) if cursor else 0
        clauses = ["seq > ?"]
        params: list[Any] = [after]
        if statuses is not None:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(status.value for status in statuses)
        if tool is not None:
            clauses.append("tool = ?")
            params.append(tool)
        sql = f"SELECT {REQUEST_COLUMNS} FROM requests WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?"
        params.append(limit + 1)

        def page(conn: sqlite3.Connection) -> Page:
            rows = conn.execute(sql, params).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            decisions = _decisions(conn, [row[1] for row in rows])
            requests = [_request(row, decisions.get(row[1], [])) for row in rows]
            return Page(requests, str(rows[-1][0]) if more else None)

        return await self._run(page)

    async def approved_unclaimed(self, decided_before: float, limit: int = 100) -> list[str]:
        return await self._run(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM requests WHERE status = 'approved' AND updated_at < ? "
                    "ORDER BY updated_at LIMIT ?",
                    (decided_before, limit),
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
                "SELECT request_id, MAX(seq) FROM audit WHERE seq > ? GROUP BY request_id", (audit_seq,)
            ).fetchall()
            newest = max((row[1] for row in rows), default=audit_seq)
            return [row[0] for row in rows], newest

        return await self._run(changed)

    async def change_counter(self) -> int:
        watch = self._watch
        if watch is None:
            raise RuntimeError("the store is not open")
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


def _fetch(conn: sqlite3.Connection, request_id: str) -> Request | None:
    row = conn.execute(f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        return None
    return _request(row, _decisions(conn, [request_id]).get(request_id, []))


def _decisions(conn: sqlite3.Connection, request_ids: list[str]) -> dict[str, list[Decision]]:
    if not request_ids:
        return {}
    found: dict[str, list[Decision]] = {}
    placeholders = ", ".join("?" for _ in request_ids)
    for request_id, principal, verdict, reason, decided_at, roles, level, edit in conn.execute(
        f"SELECT request_id, principal, verdict, reason, decided_at, roles, level, edit FROM decisions "
        f"WHERE request_id IN ({placeholders}) ORDER BY rowid",
        request_ids,
    ):
        found.setdefault(request_id, []).append(
            Decision(
                principal=principal,
                verdict=verdict,
                reason=reason,
                decided_at=utc(decided_at),
                roles=json.loads(roles),
                level=level,
                changes=None if edit is None else json.loads(edit),
            )
        )
    return found


def _request(row: sqlite3.Row | tuple[Any, ...], decisions: list[Decision]) -> Request:
    (
        _seq,
        request_id,
        tool,
        arguments,
        digest,
        summary,
        preview,
        status,
        requested_by,
        created_at,
        expires_at,
        updated_at,
        result,
        error,
        policy,
        level,
        escalated_level,
        original_arguments,
        claimed_by,
    ) = row
    snapshot = Snapshot.model_validate_json(policy)
    return Request(
        request_id=request_id,
        tool=tool,
        arguments=json.loads(arguments),
        arguments_digest=digest,
        status=Status(status),
        summary=summary,
        preview=json.loads(preview),
        requested_by=requested_by,
        created_at=utc(created_at),
        expires_at=utc(expires_at),
        updated_at=utc(updated_at),
        decisions=decisions,
        approval=approval_state(
            snapshot, decisions, escalated=escalated_level is not None and escalated_level == level
        ),
        original_arguments=None if original_arguments is None else json.loads(original_arguments),
        result=None if result is None else json.loads(result),
        error=error,
        claimed_by=claimed_by,
        # The claim sets updated_at and nothing else writes the row until it finishes.
        claimed_at=utc(updated_at) if status == Status.EXECUTING else None,
    )

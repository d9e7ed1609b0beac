"""The store several servers share: one PostgreSQL database, the same transitions as the SQLite store.

Each transition is one transaction (hitl_mcp.store.postgres_connection): its conditional write, then its
audit records appended under the chain head's lock, its outbox rows, and a NOTIFY that every server's LISTEN
connection hears at the commit. Where SQLite's write lock serialises writers, here a transition locks only
what it changes: the row it moves (a conditional UPDATE, or `FOR UPDATE` before a decision's plan reads
it), an advisory lock on what a repeated call would repeat, and the housekeeping takes its rows with
`FOR UPDATE SKIP LOCKED`, so servers sweeping, escalating or delivering at once never do anything twice
and never wait on each other.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import asyncpg

from hitl_mcp.audit import COLUMNS as AUDIT_COLUMNS
from hitl_mcp.audit import GENESIS, AuditRecord
from hitl_mcp.config import redact
from hitl_mcp.errors import ConfigError, Effect, HitlError, NotFound, NotPending, StoreUnavailable
from hitl_mcp.grants import GRANTED
from hitl_mcp.models import AuditEvent, Decision, Request, Status, utc
from hitl_mcp.notify.outbox import ClaimedDelivery, Delivery, OutboxState, OutboxSummary
from hitl_mcp.notify.routing import Routing
from hitl_mcp.notify.settings import Notifier
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
    postgres_grants,
    replay,
    report_sql,
)
from hitl_mcp.store import postgres_schema as schema
from hitl_mcp.store.postgres_connection import FAULTS, Listener, Transaction, fault, transact
from hitl_mcp.store.postgres_credentials import PostgresCredentials
from hitl_mcp.store.postgres_links import PostgresLinks
from hitl_mcp.store.postgres_rows import (
    REQUEST_COLUMNS,
    SUMMARY_COLUMNS,
    Conn,
    decisions_of,
    dumps,
    fetch,
    from_row,
    json_or_none,
    summary_from_row,
    text_in,
    text_out,
)
from hitl_mcp.store.postgres_slack import PostgresSlackMessages
from hitl_mcp.store.postgres_tally import PostgresTally
from hitl_mcp.store.sqlite_rows import filed_of

T = TypeVar("T")

POOL_SIZE = 10
AUDIT_BATCH = 2000
# Advisory lock keys (with schema.LOCK_SPACE): a filing holds the one for what a retry of it would repeat.
REPEAT_LOCK = 1

# `targets` is a JSON object from tool name to that tool's target (as stored): a request runs only where
# its tool's target is the one it was filed against.
_ON_TARGET = "(target IS NULL OR ({targets}::json ->> tool) = target)"


async def _claim(tx: Transaction, request_id: str, claim: ClaimFor, now: float) -> Any:
    """approved → executing for `claim.worker`, with its audit record; the row as claimed, or None."""
    # A request filed before targets were recorded has none, and runs wherever it is approved.
    on_target = "" if claim.targets is None else " AND " + _ON_TARGET.format(targets="$5")
    params: tuple[Any, ...] = (claim.worker, now, request_id, now)
    # Racing claims queue on the row's lock; each after the first finds it executing and gets none.
    row = await tx.conn.fetchrow(
        f"UPDATE requests SET status = 'executing', claimed_by = $1, updated_at = $2 "
        f"WHERE id = $3 AND status = 'approved' AND expires_at > $4{on_target} "
        f"RETURNING {REQUEST_COLUMNS}",
        *(params if claim.targets is None else (*params, claim.targets)),
    )
    if row is not None:
        await tx.audit(request_id, "claimed", claim.worker, now)
    return row


async def _page_rows(
    conn: Conn,
    columns: str,
    statuses: Sequence[Status] | None,
    tool: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[asyncpg.Record], dict[str, list[Decision]], str | None]:
    """A page's rows of `columns` (seq and id among them), oldest first after `cursor`, their decisions,
    and the next page's cursor."""
    where, params = _page_where(statuses, tool, cursor)
    params.append(limit + 1)
    rows = await conn.fetch(
        f"SELECT {columns} FROM requests WHERE {where} ORDER BY seq LIMIT ${len(params)}", *params
    )
    more = len(rows) > limit
    rows = rows[:limit]
    decisions = await decisions_of(conn, [row["id"] for row in rows])
    return rows, decisions, str(rows[-1]["seq"]) if more else None


def _page_where(
    statuses: Sequence[Status] | None, tool: str | None, cursor: str | None
) -> tuple[str, list[Any]]:
    clauses = ["seq > $1"]
    params: list[Any] = [int(cursor) if cursor else 0]
    if statuses is not None:
        params.append([status.value for status in statuses])
        clauses.append(f"status = ANY(${len(params)}::text[])")
    if tool is not None:
        params.append(tool)
        clauses.append(f"tool = ${len(params)}")
    return " AND ".join(clauses), params


def _denied_where(tool: str | None, cursor: str | None) -> tuple[str, list[Any]]:
    where = "event = 'denied' AND seq > $1"
    params: list[Any] = [int(cursor) if cursor else 0]
    if tool is not None:
        params.append(tool)
        where += f" AND details->>'tool' = ${len(params)}"
    return where, params


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# changed_since's SQL list of them, written once.
_NO_REQUEST = report_sql.quoted_list(NO_REQUEST_EVENTS)


class PostgresStore(
    PostgresCredentials,
    PostgresLinks,
    PostgresSlackMessages,
    postgres_grants.PostgresGrants,
    PostgresTally,
):
    """`readonly` never writes (and its sessions refuse to); `any_schema` with it skips the schema check,
    for `hitl audit`. `lock_timeout` bounds how long a transition waits for a row another server holds."""

    def __init__(
        self,
        url: str,
        *,
        notify: Sequence[Notifier] = (),
        readonly: bool = False,
        any_schema: bool = False,
        lock_timeout: float = 5.0,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.url = url
        self.readonly = readonly
        self._any_schema = any_schema and readonly
        self._routing = Routing(notify) if notify else None
        self._settings = {
            "application_name": "hitl-mcp",
            "lock_timeout": f"{max(1, round(lock_timeout * 1000))}ms",
            **({"default_transaction_read_only": "on"} if readonly else {}),
        }
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    # -- connection ------------------------------------------------------------------------------

    async def connect(self) -> asyncpg.Connection:
        """One connection of the store's own (for the schema's steps, a copy, a listener)."""
        try:
            return await asyncpg.connect(self.url, server_settings=self._settings)
        except FAULTS as error:
            raise fault(error, self.url) from None
        except ValueError as error:  # the URL itself: only what is wrong with it, never its password
            raise ConfigError(f"HITL_DB: not a PostgreSQL URL asyncpg can use ({error})") from None

    async def open(self) -> None:
        first = await self.connect()
        try:
            found = await schema.inspect(first)
        except FAULTS as error:
            raise fault(error, self.url) from None
        finally:
            await first.close()
        if not self._any_schema:
            schema.check_usable(found, redact(self.url))
        listener = Listener(self.connect)
        await listener.open()
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self._pool_size, server_settings=self._settings
            )
        except FAULTS as error:
            await listener.close()
            raise fault(error, self.url) from None
        self._listener = listener

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        if self._pool is not None:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5):
                    await self._pool.close()
                if not self._pool.is_closing() or self._pool.get_size():
                    self._pool.terminate()  # a connection that would not come back in time
        self._pool = self._listener = None

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def _write(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        if self.readonly:
            raise StoreUnavailable("this command opened the store read-only")
        return await transact(self._open_pool(), self._routing, fn, self.url)

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """A read: one snapshot, however many statements `fn` runs."""
        try:
            async with (
                self._open_pool().acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await fn(conn)
        except HitlError:
            raise
        except FAULTS as error:
            raise fault(error, self.url) from None

    # -- transitions -----------------------------------------------------------------------------

    async def insert(self, request: NewRequest) -> Request:
        status = Status.APPROVED if request.auto_approved else Status.PENDING
        policy = request.policy.model_dump_json()

        async def insert(tx: Transaction) -> Request:
            repeated = await _repeated(tx.conn, request)
            if repeated is not None:
                return repeated
            # Spent before anything is written: a grant that no longer covers calls files nothing here.
            spent = (
                await postgres_grants.spend(tx, request.grant, request.created_at) if request.grant else None
            )
            await tx.conn.execute(
                "INSERT INTO requests (id, tool, arguments, arguments_digest, summary, preview, status, "
                "requested_by, created_at, expires_at, updated_at, policy, escalate_at, target, "
                "idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                request.request_id,
                request.tool,
                dumps(request.arguments),
                request.arguments_digest,
                text_in(request.summary),
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
            )
            await tx.audit(
                request.request_id,
                "filed",
                request.requested_by,
                request.created_at,
                filed_details(request),
            )
            if spent is not None:
                details = {**spent, "tool": request.tool, "policy": request.policy.describe()}
                await tx.audit(request.request_id, GRANTED, "grant", request.created_at, details)
            elif request.auto_approved:
                await tx.audit(
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
        await self._write(lambda tx: tx.audit(event_id, event, actor, now, details))

    async def mark_unknown(self, request_id: str, worker: str, reason: str, now: float) -> Request | None:
        async def mark(tx: Transaction) -> Request | None:
            # updated_at stays: on an executing request it says when it was claimed.
            changed = await tx.conn.fetchval(
                "UPDATE requests SET effect = 'unknown', error = $1 "
                "WHERE id = $2 AND status = 'executing' AND claimed_by = $3 RETURNING 1",
                text_in(reason),
                request_id,
                worker,
            )
            if changed is None:
                return None
            await tx.audit(request_id, "outcome-unknown", worker, now, {"error": reason})
            return await fetch(tx.conn, request_id)

        return await self._write(mark)

    async def decide(
        self, request_id: str, plan: Planner, now: float, claim: ClaimFor | None = None
    ) -> Request:
        async def decide(tx: Transaction) -> Request:
            conn = tx.conn
            # The row is locked before the plan reads it: no other server can change the request between
            # what the plan saw and what is written here.
            if await conn.fetchval("SELECT 1 FROM requests WHERE id = $1 FOR UPDATE", request_id) is None:
                raise NotFound(f"no request has id {request_id!r}")
            current = await fetch(conn, request_id)
            assert current is not None
            decision = plan(current)
            edit = decision.edit
            if edit is not None:
                await conn.execute(
                    "UPDATE requests SET original_arguments = COALESCE(original_arguments, arguments), "
                    "arguments = $1, arguments_digest = $2, summary = $3, preview = $4, policy = $5 "
                    "WHERE id = $6 AND status = 'pending' AND arguments_digest = $7",
                    dumps(edit.arguments),
                    edit.arguments_digest,
                    text_in(edit.summary),
                    dumps(edit.preview),
                    edit.policy.model_dump_json(),
                    request_id,
                    edit.based_on_digest,
                )
                changes = {name: change.model_dump(mode="json") for name, change in edit.changes.items()}
                await tx.audit(request_id, "edited", decision.principal, now, {"changes": changes})
            changed = await conn.fetchval(
                "UPDATE requests SET status = $1, level = $2, "
                "escalate_at = CASE WHEN $3 THEN escalate_at ELSE $4 END, updated_at = $5 "
                "WHERE id = $6 AND status = 'pending' AND expires_at > $7 RETURNING 1",
                decision.status.value,
                -1 if decision.waiting_on is None else decision.waiting_on,
                decision.keep_escalation,
                decision.escalate_at,
                now,
                request_id,
                now,
            )
            if changed is None:
                raise NotPending(f"request {request_id} changed while deciding; read it again")
            if not decision.confirmation:
                await conn.execute(
                    "INSERT INTO decisions "
                    "(request_id, principal, verdict, reason, decided_at, roles, level, edit) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    request_id,
                    decision.principal,
                    decision.verdict,
                    text_in(decision.reason),
                    now,
                    dumps(list(decision.roles)),
                    decision.level,
                    None
                    if edit is None
                    else dumps({k: v.model_dump(mode="json") for k, v in edit.changes.items()}),
                )
            details: dict[str, Any] = {**level_details(decision.level), "status": decision.status.value}
            if decision.reason:
                details["reason"] = decision.reason
            event = "approved" if decision.verdict == "approve" else "rejected"
            if decision.confirmation:
                details["confirmation"] = True
                event = "confirmed" if decision.verdict == "approve" else "rejected"
            await tx.audit(request_id, event, decision.principal, now, details)
            if claim is not None and decision.status is Status.APPROVED:
                await _claim(tx, request_id, claim, now)
            updated = await fetch(conn, request_id)
            assert updated is not None
            return updated

        return await self._write(decide)

    async def escalate_due(self, now: float) -> list[str]:
        async def escalate(tx: Transaction) -> list[str]:
            # SKIP LOCKED: a row another server is escalating (or deciding) is left to it.
            rows = await tx.conn.fetch(
                "UPDATE requests SET escalate_at = NULL, escalated_level = level, updated_at = $1 "
                "WHERE seq IN (SELECT seq FROM requests WHERE status = 'pending' AND escalate_at <= $2 "
                "  FOR UPDATE SKIP LOCKED) AND status = 'pending' AND escalate_at <= $2 RETURNING id, level",
                now,
                now,
            )
            for request_id, level in rows:
                await tx.audit(request_id, "escalated", "gate", now, level_details(level))
            return [row[0] for row in rows]

        return await self._write(escalate)

    async def cancel(self, request_id: str, principal: str, now: float) -> bool:
        async def cancel(tx: Transaction) -> bool:
            changed = await tx.conn.fetchval(
                "UPDATE requests SET status = 'cancelled', updated_at = $1 "
                # Names are case-folded now; a request filed before that may spell its requester otherwise.
                "WHERE id = $2 AND status = 'pending' AND lower(requested_by) = lower($3) RETURNING 1",
                now,
                request_id,
                principal,
            )
            if changed is not None:
                await tx.audit(request_id, "cancelled", principal, now)
            return changed is not None

        return await self._write(cancel)

    async def claim(
        self, request_id: str, worker: str, now: float, targets: str | None = None
    ) -> Request | None:
        async def claim(tx: Transaction) -> Request | None:
            row = await _claim(tx, request_id, ClaimFor(worker, targets), now)
            if row is None:
                return None
            return from_row(row, (await decisions_of(tx.conn, [request_id])).get(request_id, []))

        return await self._write(claim)

    async def retry(self, request_id: str, principal: str, now: float) -> Request | None:
        async def retry(tx: Transaction) -> Request | None:
            # `previous` is the row as it was, locked: RETURNING alone would give the error just cleared.
            row = await tx.conn.fetchrow(
                "UPDATE requests SET status = 'approved', updated_at = $1, result = NULL, error = NULL, "
                "effect = NULL, claimed_by = NULL "
                "FROM (SELECT seq, error FROM requests WHERE id = $2 FOR UPDATE) AS previous "
                "WHERE requests.seq = previous.seq AND status = 'failed' AND effect = 'none' "
                "AND expires_at > $3 RETURNING previous.error",
                now,
                request_id,
                now,
            )
            if row is None:
                return None
            await tx.audit(request_id, "retried", principal, now, {"previous_error": text_out(row[0])})
            return await fetch(tx.conn, request_id)

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

        async def finish(tx: Transaction) -> Request | None:
            changed = await tx.conn.fetchval(
                "UPDATE requests SET status = $1, result = $2, error = $3, effect = $4, updated_at = $5 "
                "WHERE id = $6 AND status = 'executing' RETURNING 1",
                status.value,
                json_or_none(result),
                text_in(error),
                effect,
                now,
                request_id,
            )
            if changed is None:
                return None
            await tx.audit(request_id, status.value, actor, now, audited or None)
            return await fetch(tx.conn, request_id)

        return await self._write(finish)

    async def expire_overdue(self, now: float, limit: int = 500) -> list[str]:
        async def expire(tx: Transaction) -> list[str]:
            rows = await tx.conn.fetch(
                "UPDATE requests SET status = 'expired', updated_at = $1 WHERE seq IN ("
                "  SELECT seq FROM requests WHERE status IN ('pending', 'approved') AND expires_at <= $2"
                "  LIMIT $3 FOR UPDATE SKIP LOCKED) "
                "AND status IN ('pending', 'approved') AND expires_at <= $2 RETURNING id",
                now,
                now,
                limit,
            )
            ids = [str(row[0]) for row in rows]
            for request_id in ids:
                await tx.audit(request_id, "expired", "gate", now)
            return ids

        return await self._write(expire)

    # -- reads -----------------------------------------------------------------------------------

    async def get(self, request_id: str) -> Request | None:
        return await self._read(lambda conn: fetch(conn, request_id))

    async def match_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        # A LIKE prefix on a "C"-collated column is a range scan of its unique index.
        async def match(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                "SELECT id FROM requests WHERE id LIKE $1 ORDER BY id LIMIT $2", _like_prefix(prefix), limit
            )
            return [str(row[0]) for row in rows]

        return await self._read(match)

    async def page(
        self, statuses: Sequence[Status] | None, tool: str | None, limit: int, cursor: str | None
    ) -> Page:
        async def page(conn: Conn) -> Page:
            rows, decisions, next_cursor = await _page_rows(
                conn, REQUEST_COLUMNS, statuses, tool, limit, cursor
            )
            return Page([from_row(row, decisions.get(row["id"], [])) for row in rows], next_cursor)

        return await self._read(page)

    async def summaries(
        self, statuses: Sequence[Status] | None, tool: str | None, limit: int, cursor: str | None
    ) -> SummaryRows:
        async def summaries(conn: Conn) -> SummaryRows:
            rows, decisions, next_cursor = await _page_rows(
                conn, SUMMARY_COLUMNS, statuses, tool, limit, cursor
            )
            return SummaryRows(
                [summary_from_row(row, decisions.get(row["id"], [])) for row in rows], next_cursor
            )

        return await self._read(summaries)

    async def count(self, statuses: Sequence[Status] | None, tool: str | None, cursor: str | None) -> int:
        where, params = _page_where(statuses, tool, cursor)

        async def count(conn: Conn) -> int:
            return int(await conn.fetchval(f"SELECT count(*) FROM requests WHERE {where}", *params))

        return await self._read(count)

    async def denials(self, tool: str | None, limit: int, cursor: str | None) -> DenialPage:
        where, params = _denied_where(tool, cursor)

        async def denials(conn: Conn) -> DenialPage:
            rows = await conn.fetch(
                f"SELECT seq, request_id, actor, at, details::text FROM audit WHERE {where} ORDER BY seq "
                f"LIMIT ${len(params) + 1}",
                *params,
                limit + 1,
            )
            more = len(rows) > limit
            rows = rows[:limit]
            found = [
                Denial(
                    request_id=row["request_id"],
                    tool=str(details.get("tool", "")),
                    requested_by=row["actor"],
                    at=row["at"],
                    policy=str(details.get("policy", "")),
                    arguments_digest=details.get("arguments_digest"),
                )
                for row in rows
                for details in (json.loads(row["details"]),)
            ]
            return DenialPage(found, str(rows[-1]["seq"]) if more else None)

        return await self._read(denials)

    async def count_denials(self, tool: str | None, cursor: str | None) -> int:
        where, params = _denied_where(tool, cursor)

        async def count(conn: Conn) -> int:
            return int(await conn.fetchval(f"SELECT count(*) FROM audit WHERE {where}", *params))

        return await self._read(count)

    async def approved_unclaimed(
        self, decided_before: float, limit: int = 100, targets: str | None = None
    ) -> list[str]:
        on_target = "" if targets is None else " AND " + _ON_TARGET.format(targets="$3")
        params: tuple[Any, ...] = (decided_before, limit) + (() if targets is None else (targets,))

        async def unclaimed(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                f"SELECT id FROM requests WHERE status = 'approved' AND updated_at < $1{on_target} "
                "ORDER BY updated_at LIMIT $2",
                *params,
            )
            return [str(row[0]) for row in rows]

        return await self._read(unclaimed)

    async def audit_trail(self, request_id: str) -> list[AuditEvent]:
        async def trail(conn: Conn) -> list[AuditEvent]:
            rows = await conn.fetch(
                "SELECT seq, request_id, event, actor, at, details FROM audit WHERE request_id = $1 "
                "ORDER BY seq",
                request_id,
            )
            return [
                AuditEvent(
                    seq=seq, request_id=rid, event=event, actor=actor, at=utc(at), details=json.loads(details)
                )
                for seq, rid, event, actor, at, details in rows
            ]

        return await self._read(trail)

    async def audit_records(
        self, *, since: float | None = None, until: float | None = None, request_id: str | None = None
    ) -> AsyncIterator[AuditRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("request_id = ", request_id), ("at >= ", since), ("at < ", until)):
            if value is not None:
                params.append(value)
                clauses.append(f"{clause}${len(params)}")
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        # `details::text` is the json column's text exactly as written: what its hash covers.
        columns = AUDIT_COLUMNS.replace("details", "details::text")
        sql = f"SELECT {columns} FROM audit {where}ORDER BY seq"
        try:
            async with (
                self._open_pool().acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                # A cursor in one snapshot: the walk sees one consistent trail, fetched a batch at a time.
                async for row in conn.cursor(sql, *params, prefetch=AUDIT_BATCH):
                    yield AuditRecord.from_row(tuple(row.values()))
        except HitlError:
            raise
        except FAULTS as error:
            raise HitlError(f"cannot read the audit trail in {redact(self.url)}: {error}") from None

    async def filed_page(self, after: int, since: float | None, limit: int) -> list[replay.Filed]:
        sql = replay.sql("postgres", since is not None)
        params = (after, limit) if since is None else (after, since, limit)

        async def page(conn: Conn) -> list[replay.Filed]:
            return [
                replay.Filed(row[0], row[1], row[2], row[3], text_out(row[4]) or "", *row[5:])
                for row in await conn.fetch(sql, *params)
            ]

        return await self._read(page)

    async def report_rows(self, since: float | None = None) -> report_sql.ReportRows:
        sql = report_sql.statement(since is not None)
        try:
            async with (
                self._open_pool().acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                rows = await conn.fetch(sql, *(() if since is None else (since,)))
        except HitlError:
            raise
        except FAULTS as error:
            raise HitlError(f"cannot read the audit trail in {redact(self.url)}: {error}") from None
        return report_sql.rows_of(tuple(row.values()) for row in rows)

    async def audit_head(self) -> tuple[int, str]:
        # The trail's last record rather than audit_head's row: what `hitl audit verify` walks to.
        async def head(conn: Conn) -> tuple[int, str]:
            row = await conn.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))

        return await self._read(head)

    async def audit_request_ids(self, prefix: str, limit: int = 2) -> list[str]:
        async def ids(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                "SELECT DISTINCT request_id FROM audit WHERE request_id LIKE $1 ORDER BY request_id LIMIT $2",
                _like_prefix(prefix),
                limit,
            )
            return [str(row[0]) for row in rows]

        return await self._read(ids)

    async def changed_since(self, audit_seq: int | None) -> tuple[list[str], int]:
        async def changed(conn: Conn) -> tuple[list[str], int]:
            if audit_seq is None:
                return [], int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM audit"))
            rows = await conn.fetch(
                f"SELECT request_id, MAX(seq), bool_or(event NOT IN {_NO_REQUEST}) "
                "FROM audit WHERE seq > $1 GROUP BY request_id",
                audit_seq,
            )
            newest = max((int(row[1]) for row in rows), default=audit_seq)
            # A denial or a passed call leaves no request behind to read: nothing to tell subscribers.
            return [str(row[0]) for row in rows if row[2]], newest

        return await self._read(changed)

    def _tokens_heard(self) -> int | None:
        return None if self._listener is None else self._listener.tokens

    async def change_counter(self) -> int:
        # Commits counted by the LISTEN connection as their NOTIFYs arrive: asking costs nothing.
        if self._listener is None:
            raise RuntimeError("the store is not open")
        return self._listener.counter

    def next_change(self) -> anyio.Event:
        if self._listener is None:
            raise RuntimeError("the store is not open")
        return self._listener.next_change()

    # -- notification outbox (hitl_mcp.notify.outbox describes the states and the claim) ------------

    async def outbox_next_due(self) -> float | None:
        async def due(conn: Conn) -> float | None:
            value = await conn.fetchval(
                "SELECT min(greatest(next_attempt_at, coalesce(lease_until, 0))) FROM outbox "
                "WHERE state = 'pending'"
            )
            return None if value is None else float(value)

        return await self._read(due)

    async def outbox_claim(
        self, worker: str, now: float, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]:
        claim = f"{worker}:{secrets.token_hex(8)}"

        async def take(tx: Transaction) -> list[ClaimedDelivery]:
            # SKIP LOCKED: workers of several servers claiming at once take distinct rows without waiting.
            rows = await tx.conn.fetch(
                "UPDATE outbox SET claim = $1, lease_until = $2, attempts = attempts + 1 WHERE id IN ("
                "  SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= $3"
                "  AND (lease_until IS NULL OR lease_until <= $3) ORDER BY next_attempt_at, id LIMIT $4"
                "  FOR UPDATE SKIP LOCKED) "
                "RETURNING id, request_id, event, channel, notifier, label, payload, attempts",
                claim,
                now + lease_seconds,
                now,
                limit,
            )
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
                for row_id, request_id, event, channel, notifier, label, payload, attempts in sorted(
                    tuple(row.values()) for row in rows
                )
            ]

        return await self._write(take)

    async def outbox_delivered(self, row_id: int, claim: str, now: float) -> bool:
        return await self._changed_row(
            "UPDATE outbox SET state = 'delivered', delivered_at = $1, claim = NULL, lease_until = NULL "
            "WHERE id = $2 AND claim = $3 AND state = 'pending' RETURNING 1",
            now,
            row_id,
            claim,
        )

    async def outbox_failed(
        self, row_id: int, claim: str, error: str, now: float, retry_at: float | None
    ) -> bool:
        return await self._changed_row(
            "UPDATE outbox SET state = $1, next_attempt_at = $2, last_error = $3, claim = NULL, "
            "lease_until = NULL WHERE id = $4 AND claim = $5 AND state = 'pending' RETURNING 1",
            "dead" if retry_at is None else "pending",
            now if retry_at is None else retry_at,
            text_in(error),
            row_id,
            claim,
        )

    async def outbox_release(self, row_id: int, claim: str) -> bool:
        return await self._changed_row(
            "UPDATE outbox SET claim = NULL, lease_until = NULL "
            "WHERE id = $1 AND claim = $2 AND state = 'pending' RETURNING 1",
            row_id,
            claim,
        )

    async def _changed_row(self, sql: str, *params: Any) -> bool:
        async def change(tx: Transaction) -> bool:
            return await tx.conn.fetchval(sql, *params) is not None

        return await self._write(change)

    async def outbox_prune(self, delivered_before: float) -> int:
        """Forget deliveries made before `delivered_before`: the audit trail still holds their events."""

        async def prune(tx: Transaction) -> int:
            status = await tx.conn.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < $1", delivered_before
            )
            return int(status.rpartition(" ")[2] or 0)

        return await self._write(prune)

    async def outbox_summary(self, limit: int) -> OutboxSummary:
        columns = (
            "id, request_id, event, channel, label, state, attempts, created_at, next_attempt_at, last_error"
        )

        def delivery(row: asyncpg.Record) -> Delivery:
            values = list(row.values())
            values[-1] = text_out(values[-1])
            return Delivery(*values)

        async def summary(conn: Conn) -> OutboxSummary:
            counts: dict[OutboxState, int] = {"pending": 0, "delivered": 0, "dead": 0}
            for state, count in await conn.fetch("SELECT state, count(*) FROM outbox GROUP BY state"):
                counts[state] = int(count)
            dead = await conn.fetch(
                f"SELECT {columns} FROM outbox WHERE state = 'dead' ORDER BY id DESC LIMIT $1", limit
            )
            failing = await conn.fetch(
                f"SELECT {columns} FROM outbox WHERE state = 'pending' AND last_error IS NOT NULL "
                "ORDER BY id DESC LIMIT $1",
                limit,
            )
            return OutboxSummary(
                counts=counts,
                dead=[delivery(row) for row in dead],
                failing=[delivery(row) for row in failing],
            )

        return await self._read(summary)

    async def outbox_retry(self, row_ids: list[int] | None, now: float) -> list[int]:
        async def retry(tx: Transaction) -> list[int]:
            # The last error stays until the next attempt overwrites it or succeeds.
            sql = (
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $1 WHERE state = 'dead'"
            )
            params: list[Any] = [now]
            if row_ids is not None:
                sql += " AND id = ANY($2::bigint[])"
                params.append(row_ids)
            return sorted(int(row[0]) for row in await tx.conn.fetch(sql + " RETURNING id", *params))

        return await self._write(retry)


async def _repeated(conn: Conn, request: NewRequest) -> Request | None:
    """The request this one repeats: the same idempotency key from the same principal (whatever became of
    it), or else, within the dedup window, a pending request of that principal with the same digest.

    Racing retries in two servers would both find none and both file: each first takes an advisory lock
    on what it would repeat, held to its commit, so the second looks only once the first has filed."""
    if request.idempotency_key is not None:
        what = f"key\x1f{request.requested_by}\x1f{request.idempotency_key}"
    elif request.dedup_since is not None and not request.auto_approved:
        what = f"digest\x1f{request.requested_by}\x1f{request.arguments_digest}"
    else:
        return None
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))", schema.LOCK_SPACE + REPEAT_LOCK, what
    )
    if request.idempotency_key is not None:
        found = await conn.fetchval(
            "SELECT id FROM requests WHERE requested_by = $1 AND idempotency_key = $2",
            request.requested_by,
            request.idempotency_key,
        )
    else:
        found = await conn.fetchval(
            "SELECT id FROM requests WHERE requested_by = $1 AND arguments_digest = $2 "
            "AND status = 'pending' AND created_at >= $3 AND expires_at > $4 ORDER BY seq DESC LIMIT 1",
            request.requested_by,
            request.arguments_digest,
            request.dedup_since,
            request.created_at,
        )
    return None if found is None else await fetch(conn, found)

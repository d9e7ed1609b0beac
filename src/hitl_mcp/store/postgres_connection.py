"""The PostgreSQL store's connections: transitions as transactions that append their audit records last,
the LISTEN connection that tells every server of every commit, and what the server's errors mean.

A transition runs in one transaction on a pooled connection. Its audit records are collected as it goes
and appended at its end, under the lock of the one-row `audit_head` table, together with their outbox rows
and a NOTIFY: one statement, then COMMIT. The head's lock is held from the moment a record's seq is taken
until the commit, so the chain's order is the commit order and a reader who has seen seq N will never see
a later commit bring a record below N (the audit seq is the change log, as in SQLite). Holding it only for
that last statement and the commit keeps servers from queueing behind one another's whole transitions.

No group commit of our own: the head's lock orders audit-writing commits one after another, so each
transition costs one WAL flush, and PostgreSQL's own grouping of concurrent flushes has little to join.
Measured (bench/postgres.py, fsync on, this 2-core machine): three processes of eight sessions each make
about 3,900 transitions per second (967 file + approve cycles), 1.1 times one SQLite process with its group
commit; a batching writer here would add complexity for a store that is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg
from asyncpg import exceptions as pg

from hitl_mcp.audit import AuditRecord, link
from hitl_mcp.config import redact
from hitl_mcp.errors import ConfigError, HitlError, StoreUnavailable
from hitl_mcp.metrics import PROCESS
from hitl_mcp.models import Request
from hitl_mcp.notify.routing import Routing
from hitl_mcp.store.postgres_rows import Conn, dumps, fetch

logger = logging.getLogger(__name__)


class _PoolFloorRetries(logging.Filter):
    """asyncpg logs every failed attempt to reconnect its pool's floor as a WARNING with a traceback, for
    as long as the server is down; the outage is already logged once, in words (`store/outage.py`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to restore the pool connection floor")


logging.getLogger("asyncpg.pool").addFilter(_PoolFloorRetries())

T = TypeVar("T")

CHANNEL = "hitl_changes"
# The payload of the NOTIFY a token's making or revoking adds to its commit's: a tokenless server keeps its
# answer to "does any token exist?" until it hears one.
TOKENS_CHANGED = "tokens"
# A transaction that meets a deadlock or a serialization failure rolled back whole: run it again.
RETRIES = 5
RECONNECT_SECONDS = 0.5

_APPEND = """
WITH appended AS (
    INSERT INTO audit (seq, request_id, event, actor, at, details, prev_hash, hash)
    SELECT s, r, e, a, t, d::json, p, h
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], $7::text[],
                $8::text[]) AS u(s, r, e, a, t, d, p, h)
), queued AS (
    INSERT INTO outbox (audit_seq, request_id, event, channel, notifier, label, payload, created_at,
                        next_attempt_at)
    SELECT s, r, e, c, n, l, p::json, t, 0
    FROM unnest($9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                $16::float8[]) AS u(s, r, e, c, n, l, p, t)
    ON CONFLICT DO NOTHING
), head AS (
    UPDATE audit_head SET hash = $17 WHERE singleton
)
SELECT pg_notify($18, $19)
"""


@dataclass
class _Pending:
    request_id: str
    event: str
    actor: str
    at: float
    details: dict[str, Any]
    request: Request | None
    """The request as this transition left it when the record was made, for the outbox's message."""


@dataclass
class Transaction:
    """One transition's transaction: the connection, and the audit records it will append at its end."""

    conn: Conn
    routing: Routing | None
    _records: list[_Pending] = field(default_factory=list)

    async def audit(
        self, request_id: str, event: str, actor: str, at: float, details: dict[str, Any] | None = None
    ) -> None:
        wanted = self.routing is not None and self.routing.wants(event)
        # Read now, as the SQLite store does: an `edited` record's message shows the edit, not the decision.
        request = await fetch(self.conn, request_id) if wanted else None
        self._records.append(_Pending(request_id, event, actor, at, details or {}, request))

    async def finish(self) -> None:
        """Append the collected records under the head's lock, queue their notifications, and NOTIFY."""
        records = self._records
        self._records = []
        if not records:
            await self.conn.execute("SELECT pg_notify($1, '')", CHANNEL)
            return
        head = await self.conn.fetchrow(
            "UPDATE audit_head SET seq = seq + $1 WHERE singleton RETURNING seq - $1 AS seq, hash",
            len(records),
        )
        if head is None:
            raise StoreUnavailable("the store is damaged: its audit_head row is missing", certain=True)
        seq, prev = int(head["seq"]), str(head["hash"])
        chained: list[AuditRecord] = []
        queued: list[tuple[int, str, str, str, str, str, str, float]] = []
        for pending in records:
            record = link(
                seq,
                prev,
                pending.request_id,
                pending.event,
                pending.actor,
                pending.at,
                dumps(pending.details),
            )
            seq, prev = record.seq, record.hash
            chained.append(record)
            if self.routing is not None and self.routing.wants(pending.event):
                # No request for an event of none (an upstream's tool-changed): routed as a notice.
                for entry in self.routing.entries_for(
                    pending.event, pending.request, pending.actor, pending.at, pending.details, record.seq
                ):
                    queued.append(
                        (
                            record.seq,
                            pending.request_id,
                            pending.event,
                            entry.channel,
                            entry.notifier,
                            entry.label,
                            entry.payload,
                            pending.at,
                        )
                    )
        columns = list(zip(*(record.row() for record in chained), strict=True))
        outbox = list(zip(*queued, strict=True)) if queued else [()] * 8
        await self.conn.execute(
            _APPEND,
            *(list(column) for column in columns),
            *(list(column) for column in outbox),
            prev,
            CHANNEL,
            str(seq),
        )


class Listener:
    """A connection that LISTENs for every commit to the store, by any server, and counts them.

    `counter` is what `change_counter` returns, so asking it costs nothing; `next_change()` is an event set
    at the next one. A lost connection is reconnected, and counted as a change: commits may have been
    missed meanwhile, and whoever waits looks again."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._connect = connect
        self._conn: Conn | None = None
        self._event = anyio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self.counter = 0
        # Moves with each NOTIFY whose payload is TOKENS_CHANGED, and whenever commits may have been missed.
        self.tokens = 0

    async def open(self) -> None:
        conn = await self._connect()
        await conn.add_listener(CHANNEL, self._heard)
        conn.add_termination_listener(self._lost)
        self._conn = conn

    def next_change(self) -> anyio.Event:
        return self._event

    def _heard(self, *heard: object) -> None:
        # asyncpg passes (connection, pid, channel, payload); a lost or renewed connection passes less.
        if len(heard) < 4 or heard[3] == TOKENS_CHANGED:
            self.tokens += 1
        self.counter += 1
        event, self._event = self._event, anyio.Event()
        event.set()

    def _lost(self, *_: object) -> None:
        if self._closed or self._reconnecting is not None:
            return
        self._heard()
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        failed = False
        while not self._closed:
            try:
                await self.open()
            except FAULTS as error:
                # Once per outage, not once per attempt: a server down for an hour is 7200 attempts.
                if not failed:
                    logger.warning("lost the store's change feed; reconnecting (%s)", error)
                failed = True
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            self._heard()
            if failed:
                logger.info("the store's change feed is back")
            break
        self._reconnecting = None

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close(timeout=2)


async def transact(
    pool: asyncpg.Pool, routing: Routing | None, fn: Callable[[Transaction], Awaitable[T]], where: str
) -> T:
    """Run `fn` in a transaction of its own and commit it with its audit records. Shielded: once begun,
    a transition finishes (or fails) whatever becomes of its caller, who would otherwise never hear."""
    with anyio.CancelScope(shield=True):
        for attempt in range(RETRIES):
            try:
                return await _attempt(pool, routing, fn)
            except pg.TransactionRollbackError:
                # A deadlock or serialization failure rolled the whole transaction back: run it again.
                if attempt == RETRIES - 1:
                    raise StoreUnavailable("the store is too busy (transactions kept colliding)") from None
            except _Uncertain as lost:
                raise fault(lost.error, where, certain=False) from None
            except HitlError:
                raise
            except FAULTS as error:
                raise fault(error, where) from None
    raise AssertionError("unreachable")


# What the driver raises for the database's and the connection's faults (anything else is a bug).
# asyncpg's InternalClientError ("cannot switch to state …; another operation is in progress") is what a
# connection that broke in the middle of an operation answers the next one with: a lost connection too.
FAULTS = (OSError, pg.PostgresError, pg.InterfaceError, pg.InternalClientError)
_CONNECTION_LOST = (OSError, pg.PostgresConnectionError, pg.InterfaceError, pg.InternalClientError)


class _Uncertain(Exception):
    """The connection failed while committing: the transaction may or may not have been applied."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def _attempt(
    pool: asyncpg.Pool, routing: Routing | None, fn: Callable[[Transaction], Awaitable[T]]
) -> T:
    async with pool.acquire() as conn:
        started = time.perf_counter()
        transaction = conn.transaction()
        await transaction.start()
        try:
            tx = Transaction(conn, routing)
            result = await fn(tx)
            await tx.finish()
        except BaseException:
            # If the connection is gone, the server rolls back whatever it had.
            with contextlib.suppress(*FAULTS):
                await transaction.rollback()
            raise
        try:
            await transaction.commit()
        except _CONNECTION_LOST as error:
            raise _Uncertain(error) from None
        PROCESS.commit("postgresql", time.perf_counter() - started)
        return result


def fault(error: BaseException, where: str, *, certain: bool = True) -> HitlError:
    """What a PostgreSQL error means for the caller, in words; `certain` that nothing was written."""
    if isinstance(error, pg.InvalidCatalogNameError):
        return ConfigError(f"HITL_DB: {redact(where)}: the database does not exist; create it (createdb)")
    if isinstance(error, pg.InvalidAuthorizationSpecificationError):
        return ConfigError(f"HITL_DB: PostgreSQL at {server(where)} refused the login ({error})")
    if isinstance(error, pg.InsufficientPrivilegeError):
        return StoreUnavailable(f"the store's database user may not do this ({error})", certain=certain)
    if isinstance(error, pg.LockNotAvailableError):
        return StoreUnavailable("the store is locked by another process", certain=certain)
    if isinstance(error, pg.DiskFullError):
        return StoreUnavailable("the disk is full", certain=certain)
    if isinstance(error, pg.ReadOnlySQLTransactionError):
        return StoreUnavailable("the store is read-only", certain=certain)
    if isinstance(error, pg.UndefinedTableError | pg.UndefinedColumnError):
        return StoreUnavailable(f"the store is damaged or not a hitl store ({error})", certain=certain)
    if isinstance(error, pg.QueryCanceledError):
        return StoreUnavailable("the store did not answer in time", certain=certain)
    if isinstance(error, (*_CONNECTION_LOST, pg.CannotConnectNowError, pg.AdminShutdownError)):
        lost = "" if certain else "; the change may or may not be saved"
        why = str(error) or type(error).__name__
        return StoreUnavailable(
            f"the PostgreSQL server at {server(where)} cannot be reached ({why}){lost}", certain=certain
        )
    return StoreUnavailable(f"the store failed ({error})", certain=certain)


def server(where: str) -> str:
    """host:port of a database URL, for messages (never its password)."""
    parts = urlsplit(where)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"

"""Grants in the PostgreSQL store (`hitl_mcp.store.grants`), mixed into `PostgresStore`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from hitl_mcp.config import fold_principal
from hitl_mcp.errors import NotFound
from hitl_mcp.grants import (
    GRANT_CREATED,
    Grant,
    GrantUnavailable,
    approvers_json,
    approvers_of,
    needs_of,
)
from hitl_mcp.store.grants import COLUMNS, GrantPlanner, grant_details
from hitl_mcp.store.postgres_connection import Transaction
from hitl_mcp.store.postgres_rows import Conn
from hitl_mcp.store.sqlite_grants import row_of

T = TypeVar("T")

LIVE = "state <> 'revoked' AND expires_at > $1 AND (uses_left IS NULL OR uses_left > 0)"
# Under READ COMMITTED a second spender waits on the row lock and re-checks the WHERE against the first
# one's commit: N racing calls, on any number of servers, spend N uses and never more than there are.
SPEND = (
    "UPDATE grants SET uses_made = uses_made + 1, uses_left = uses_left - 1 "
    "WHERE id = $1 AND state = 'active' AND expires_at > $2 AND (uses_left IS NULL OR uses_left > 0) "
    "RETURNING uses_left, uses_made"
)


def grant_of(row: asyncpg.Record) -> Grant:
    return Grant(
        id=row["id"],
        tool=row["tool"],
        requester=row["requester"],
        when=row["when_expr"],
        any_arguments=bool(row["any_arguments"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        uses=row["uses"],
        uses_left=row["uses_left"],
        uses_made=row["uses_made"],
        state=row["state"],
        approvers=approvers_of(row["approvers"]),
        needs=needs_of(row["needs"]),
        reason=row["reason"],
        revoked_by=row["revoked_by"],
        revoked_at=row["revoked_at"],
    )


async def spend(tx: Transaction, grant_id: str, now: float) -> dict[str, Any]:
    """Spend one use inside a covered call's insert, or GrantUnavailable, which rolls the insert back."""
    row = await tx.conn.fetchrow(SPEND, grant_id, now)
    if row is None:
        raise GrantUnavailable(f"grant {grant_id} no longer covers calls")
    return {"grant": grant_id, "uses_left": row["uses_left"], "uses_made": row["uses_made"]}


class PostgresGrants:
    """The `GrantStore` methods; `PostgresStore` gives them its reads and transactions."""

    async def _write(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def grant_insert(self, grant: Grant) -> Grant:
        # The same row as SQLite's (any_arguments 0 or 1): `hitl db migrate` copies it as it is.
        values = row_of(grant)

        async def insert(tx: Transaction) -> Grant:
            placeholders = ", ".join(f"${number}" for number in range(1, 18))
            await tx.conn.execute(f"INSERT INTO grants ({COLUMNS}) VALUES ({placeholders})", *values)
            await tx.audit(grant.id, GRANT_CREATED, grant.created_by, grant.created_at, grant_details(grant))
            return grant

        return await self._write(insert)

    async def grant_get(self, grant_id: str) -> Grant | None:
        async def get(conn: Conn) -> Grant | None:
            row = await conn.fetchrow(f"SELECT {COLUMNS} FROM grants WHERE id = $1", grant_id)
            return None if row is None else grant_of(row)

        return await self._read(get)

    async def grant_list(self, include_finished: bool, now: float) -> list[Grant]:
        async def grants(conn: Conn) -> list[Grant]:
            if include_finished:
                rows = await conn.fetch(f"SELECT {COLUMNS} FROM grants ORDER BY created_at, id")
            else:
                rows = await conn.fetch(
                    f"SELECT {COLUMNS} FROM grants WHERE {LIVE} ORDER BY created_at, id", now
                )
            return [grant_of(row) for row in rows]

        return await self._read(grants)

    async def grant_candidates(self, tool: str, requester: str, now: float) -> list[Grant]:
        async def candidates(conn: Conn) -> list[Grant]:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM grants WHERE state = 'active' AND tool = $2 AND requester = $3 "
                f"AND {LIVE} ORDER BY created_at, id",
                now,
                tool,
                fold_principal(requester),
            )
            return [grant_of(row) for row in rows]

        return await self._read(candidates)

    async def grant_change(
        self, grant_id: str, plan: GrantPlanner, event: str, actor: str, now: float
    ) -> Grant:
        async def change(tx: Transaction) -> Grant:
            # Locked before the plan reads it: two approvers of one grant are judged one after the other.
            row = await tx.conn.fetchrow(f"SELECT {COLUMNS} FROM grants WHERE id = $1 FOR UPDATE", grant_id)
            if row is None:
                raise NotFound(f"no grant has id {grant_id!r}")
            changed = plan(grant_of(row))
            await tx.conn.execute(
                "UPDATE grants SET state = $1, approvers = $2, revoked_by = $3, revoked_at = $4 "
                "WHERE id = $5",
                changed.state,
                approvers_json(changed.approvers),
                changed.revoked_by,
                changed.revoked_at,
                grant_id,
            )
            await tx.audit(grant_id, event, actor, now, grant_details(changed))
            return changed

        return await self._write(change)

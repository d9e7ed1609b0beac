"""Grants in the SQLite store (`hitl_mcp.store.grants`), mixed into `SQLiteStore`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from hitl_mcp.config import fold_principal
from hitl_mcp.errors import NotFound
from hitl_mcp.grants import (
    GRANT_CREATED,
    Grant,
    GrantUnavailable,
    approvers_json,
    approvers_of,
    needs_json,
    needs_of,
)
from hitl_mcp.store.grants import COLUMNS, GrantPlanner, grant_details

T = TypeVar("T")

# Live: not revoked, not expired, with uses left (a used-up or expired grant is finished without a write).
LIVE = "state != 'revoked' AND expires_at > ? AND (uses_left IS NULL OR uses_left > 0)"
# Spends one use of a grant that still covers calls; no row back means it no longer does.
SPEND = (
    "UPDATE grants SET uses_made = uses_made + 1, uses_left = uses_left - 1 "
    "WHERE id = ? AND state = 'active' AND expires_at > ? AND (uses_left IS NULL OR uses_left > 0) "
    "RETURNING uses_left, uses_made"
)


def grant_of(row: Any) -> Grant:
    return Grant(
        id=row[0],
        tool=row[1],
        requester=row[2],
        when=row[3],
        any_arguments=bool(row[4]),
        created_by=row[5],
        created_at=row[6],
        expires_at=row[7],
        uses=row[8],
        uses_left=row[9],
        uses_made=row[10],
        state=row[11],
        approvers=approvers_of(row[12]),
        needs=needs_of(row[13]),
        reason=row[14],
        revoked_by=row[15],
        revoked_at=row[16],
    )


def row_of(grant: Grant) -> tuple[Any, ...]:
    return (
        grant.id,
        grant.tool,
        grant.requester,
        grant.when,
        int(grant.any_arguments),
        grant.created_by,
        grant.created_at,
        grant.expires_at,
        grant.uses,
        grant.uses_left,
        grant.uses_made,
        grant.state,
        approvers_json(grant.approvers),
        needs_json(grant.needs),
        grant.reason,
        grant.revoked_by,
        grant.revoked_at,
    )


def audit(
    conn: sqlite3.Connection, grant_id: str, event: str, actor: str, at: float, details: dict[str, Any]
) -> None:
    """A grant's audit record, with the notifications its event queues (`grant-created`, `grant-revoked`)."""
    # Imported here: the store's module imports this one to mix it in.
    from hitl_mcp.store.sqlite import _audit

    _audit(conn, grant_id, event, actor, at, details)


def spend(conn: sqlite3.Connection, grant_id: str, now: float) -> dict[str, Any]:
    """Spend one use inside the caller's write transaction (a covered call's insert): what the `granted`
    record says of it, or GrantUnavailable, which rolls the insert back."""
    row = conn.execute(SPEND, (grant_id, now)).fetchone()
    if row is None:
        raise GrantUnavailable(f"grant {grant_id} no longer covers calls")
    return {"grant": grant_id, "uses_left": row[0], "uses_made": row[1]}


class SQLiteGrants:
    """The `GrantStore` methods; `SQLiteStore` gives them its reads and writes."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def grant_insert(self, grant: Grant) -> Grant:
        def insert(conn: sqlite3.Connection) -> Grant:
            conn.execute(f"INSERT INTO grants ({COLUMNS}) VALUES ({', '.join('?' * 17)})", row_of(grant))
            audit(conn, grant.id, GRANT_CREATED, grant.created_by, grant.created_at, grant_details(grant))
            return grant

        return await self._write(insert)

    async def grant_get(self, grant_id: str) -> Grant | None:
        def get(conn: sqlite3.Connection) -> Grant | None:
            row = conn.execute(f"SELECT {COLUMNS} FROM grants WHERE id = ?", (grant_id,)).fetchone()
            return None if row is None else grant_of(row)

        return await self._run(get)

    async def grant_list(self, include_finished: bool, now: float) -> list[Grant]:
        def grants(conn: sqlite3.Connection) -> list[Grant]:
            where, params = ("", ()) if include_finished else (f"WHERE {LIVE}", (now,))
            sql = f"SELECT {COLUMNS} FROM grants {where} ORDER BY created_at, id"
            return [grant_of(row) for row in conn.execute(sql, params)]

        return await self._run(grants)

    async def grant_candidates(self, tool: str, requester: str, now: float) -> list[Grant]:
        def candidates(conn: sqlite3.Connection) -> list[Grant]:
            sql = (
                f"SELECT {COLUMNS} FROM grants WHERE state = 'active' AND tool = ? AND requester = ? "
                f"AND {LIVE} ORDER BY created_at, id"
            )
            return [grant_of(row) for row in conn.execute(sql, (tool, fold_principal(requester), now))]

        return await self._run(candidates)

    async def grant_change(
        self, grant_id: str, plan: GrantPlanner, event: str, actor: str, now: float
    ) -> Grant:
        def change(conn: sqlite3.Connection) -> Grant:
            # Read under the write lock: two approvers of one grant are judged one after the other.
            row = conn.execute(f"SELECT {COLUMNS} FROM grants WHERE id = ?", (grant_id,)).fetchone()
            if row is None:
                raise NotFound(f"no grant has id {grant_id!r}")
            changed = plan(grant_of(row))
            conn.execute(
                "UPDATE grants SET state = ?, approvers = ?, revoked_by = ?, revoked_at = ? WHERE id = ?",
                (
                    changed.state,
                    approvers_json(changed.approvers),
                    changed.revoked_by,
                    changed.revoked_at,
                    grant_id,
                ),
            )
            audit(conn, grant_id, event, actor, now, grant_details(changed))
            return changed

        return await self._write(change)

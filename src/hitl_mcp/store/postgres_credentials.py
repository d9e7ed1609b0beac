"""Tokens and sessions in the PostgreSQL store (`hitl_mcp.store.credentials`), mixed into `PostgresStore`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from hitl_mcp.errors import InvalidArguments
from hitl_mcp.store.credentials import TOKEN_MADE, TOKEN_REVOKED, NewToken, StoredSession, StoredToken
from hitl_mcp.store.postgres_connection import CHANNEL, TOKENS_CHANGED, Transaction
from hitl_mcp.store.postgres_rows import Conn, dumps
from hitl_mcp.store.sqlite_credentials import SESSION_COLUMNS, TOKEN_COLUMNS, token_details

T = TypeVar("T")


def _token(row: asyncpg.Record) -> StoredToken:
    return StoredToken(
        row["id"],
        row["name"],
        row["principal"],
        tuple(json.loads(row["roles"])),
        row["created_at"],
        row["created_by"],
        row["expires_at"],
        row["last_used_at"],
        row["revoked_at"],
    )


def _session(row: asyncpg.Record) -> StoredSession:
    return StoredSession(
        row["principal"],
        tuple(json.loads(row["roles"])),
        row["csrf"],
        row["id_token"],
        row["created_at"],
        row["last_seen_at"],
        row["expires_at"],
    )


def _name_taken(name: str) -> InvalidArguments:
    return InvalidArguments(f"name: a token named {name!r} exists; revoke it first or pick another name")


# How long an answer to `live_token_exists` is kept even when no change is heard: a token written past the
# change feed (a copy by `hitl db migrate` into a running store) counts within this.
TOKENS_REASK_SECONDS = 1.0


class PostgresCredentials:
    """The `CredentialStore` methods; `PostgresStore` gives them its reads and transactions."""

    # (what the change feed had heard of tokens, when, the answer): the answer holds while both hold.
    _live_token_answer: tuple[int, float, bool] | None = None

    async def _write(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    def _tokens_heard(self) -> int | None:
        """How many token changes the change feed has announced; None without a feed."""
        raise NotImplementedError

    async def token_insert(self, token: NewToken) -> StoredToken:
        async def insert(tx: Transaction) -> StoredToken:
            try:
                row = await tx.conn.fetchrow(
                    "INSERT INTO tokens (id, name, principal, roles, sha256, created_at, created_by, "
                    f"expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {TOKEN_COLUMNS}",
                    token.id,
                    token.name,
                    token.principal,
                    dumps(list(token.roles)),
                    token.sha256,
                    token.created_at,
                    token.created_by,
                    token.expires_at,
                )
            except asyncpg.UniqueViolationError as error:
                # The live-name index (two makers of one name at once included); a digest never collides.
                raise _name_taken(token.name) from error
            if row is None:
                raise RuntimeError("INSERT … RETURNING returned no row")
            stored = _token(row)
            await tx.audit(token.id, TOKEN_MADE, token.created_by, token.created_at, token_details(stored))
            await tx.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, TOKENS_CHANGED)
            return stored

        return await self._write(insert)

    async def token_find(self, sha256: str, now: float) -> StoredToken | None:
        async def find(conn: Conn) -> StoredToken | None:
            row = await conn.fetchrow(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE sha256 = $1 AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > $2)",
                sha256,
                now,
            )
            return None if row is None else _token(row)

        return await self._read(find)

    async def token_used(self, token_id: str, now: float) -> None:
        async def used(tx: Transaction) -> None:
            await tx.conn.execute("UPDATE tokens SET last_used_at = $1 WHERE id = $2", now, token_id)

        await self._write(used)

    async def token_list(self, principal: str | None = None) -> list[StoredToken]:
        async def tokens(conn: Conn) -> list[StoredToken]:
            if principal is None:
                rows = await conn.fetch(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id")
            else:
                rows = await conn.fetch(
                    f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE principal = $1 ORDER BY created_at, id",
                    principal,
                )
            return [_token(row) for row in rows]

        return await self._read(tokens)

    async def token_revoke(
        self, ref: str, actor: str, now: float, *, principal: str | None = None
    ) -> StoredToken | None:
        async def revoke(tx: Transaction) -> StoredToken | None:
            params: list[Any] = [now, ref]
            mine = ""
            if principal is not None:
                params.append(principal)
                mine = " AND principal = $3"
            row = await tx.conn.fetchrow(
                "UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND (id = $2 OR name = $2)"
                f"{mine} RETURNING {TOKEN_COLUMNS}",
                *params,
            )
            if row is None:
                return None
            token = _token(row)
            await tx.audit(token.id, TOKEN_REVOKED, actor, now, token_details(token))
            await tx.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, TOKENS_CHANGED)
            return token

        return await self._write(revoke)

    async def token_count(self, now: float) -> int:
        async def count(conn: Conn) -> int:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM tokens WHERE revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > $1)",
                    now,
                )
            )

        return await self._read(count)

    async def live_token_exists(self, now: float) -> bool:
        heard = self._tokens_heard()
        kept = self._live_token_answer
        if (
            heard is not None
            and kept is not None
            and kept[0] == heard
            and 0 <= now - kept[1] < TOKENS_REASK_SECONDS
        ):
            return kept[2]

        async def exists(conn: Conn) -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > $1))",
                    now,
                )
            )

        # Taken before the read: a change announced while it runs makes the next ask read again.
        found = await self._read(exists)
        if heard is not None:
            self._live_token_answer = (heard, now, found)
        return found

    async def session_insert(self, sha256: str, session: StoredSession) -> None:
        async def insert(tx: Transaction) -> None:
            await tx.conn.execute(
                f"INSERT INTO sessions (sha256, {SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                sha256,
                session.principal,
                dumps(list(session.roles)),
                session.csrf,
                session.id_token,
                session.created_at,
                session.last_seen_at,
                session.expires_at,
            )

        await self._write(insert)

    async def session_find(self, sha256: str, now: float, idle_seconds: float) -> StoredSession | None:
        async def find(conn: Conn) -> StoredSession | None:
            row = await conn.fetchrow(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE sha256 = $1 AND expires_at > $2 "
                "AND last_seen_at > $3",
                sha256,
                now,
                now - idle_seconds,
            )
            return None if row is None else _session(row)

        return await self._read(find)

    async def session_touch(self, sha256: str, now: float) -> None:
        async def touch(tx: Transaction) -> None:
            await tx.conn.execute("UPDATE sessions SET last_seen_at = $1 WHERE sha256 = $2", now, sha256)

        await self._write(touch)

    async def session_delete(self, sha256: str) -> bool:
        async def delete(tx: Transaction) -> bool:
            gone = await tx.conn.fetchval("DELETE FROM sessions WHERE sha256 = $1 RETURNING 1", sha256)
            return gone is not None

        return await self._write(delete)

    async def session_prune(self, now: float, idle_seconds: float) -> int:
        async def prune(tx: Transaction) -> int:
            status = await tx.conn.execute(
                "DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2", now, now - idle_seconds
            )
            return int(status.split()[-1])

        return await self._write(prune)

"""Tokens and sessions in the SQLite store (`hitl_mcp.store.credentials`), mixed into `SQLiteStore`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from hitl_mcp.errors import InvalidArguments, StoreUnavailable
from hitl_mcp.store import sqlite_audit
from hitl_mcp.store.credentials import TOKEN_MADE, TOKEN_REVOKED, NewToken, StoredSession, StoredToken
from hitl_mcp.store.sqlite_rows import dumps

T = TypeVar("T")

TOKEN_COLUMNS = "id, name, principal, roles, created_at, created_by, expires_at, last_used_at, revoked_at"  # noqa: S105
SESSION_COLUMNS = "principal, roles, csrf, id_token, created_at, last_seen_at, expires_at"


def token_of(row: Any) -> StoredToken:
    return StoredToken(
        row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5], row[6], row[7], row[8]
    )


def session_of(row: Any) -> StoredSession:
    return StoredSession(row[0], tuple(json.loads(row[1])), row[2], row[3], row[4], row[5], row[6])


def token_details(token: StoredToken) -> dict[str, Any]:
    return {
        "name": token.name,
        "principal": token.principal,
        "roles": list(token.roles),
        "expires_at": token.expires_at,
    }


class SQLiteCredentials:
    """The `CredentialStore` methods; `SQLiteStore` gives them its reads and writes."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    def _watching(self) -> sqlite3.Connection:
        raise NotImplementedError

    async def token_insert(self, token: NewToken) -> StoredToken:
        def insert(conn: sqlite3.Connection) -> StoredToken:
            # Checked under the write lock, so two makers of one name cannot both pass.
            taken = conn.execute(
                "SELECT id FROM tokens WHERE name = ? AND revoked_at IS NULL", (token.name,)
            ).fetchone()
            if taken is not None:
                raise InvalidArguments(
                    f"name: a token named {token.name!r} exists ({taken[0]}); revoke it first or pick "
                    "another name"
                )
            conn.execute(
                "INSERT INTO tokens (id, name, principal, roles, sha256, created_at, created_by, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.name,
                    token.principal,
                    dumps(list(token.roles)),
                    token.sha256,
                    token.created_at,
                    token.created_by,
                    token.expires_at,
                ),
            )
            row = conn.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token.id,)).fetchone()
            stored = token_of(row)
            sqlite_audit.append(
                conn, token.id, TOKEN_MADE, token.created_by, token.created_at, dumps(token_details(stored))
            )
            return stored

        return await self._write(insert)

    async def token_find(self, sha256: str, now: float) -> StoredToken | None:
        def find(conn: sqlite3.Connection) -> StoredToken | None:
            row = conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE sha256 = ? AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (sha256, now),
            ).fetchone()
            return None if row is None else token_of(row)

        return await self._run(find)

    async def token_used(self, token_id: str, now: float) -> None:
        await self._write(
            lambda conn: conn.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id))
        )

    async def token_list(self, principal: str | None = None) -> list[StoredToken]:
        def tokens(conn: sqlite3.Connection) -> list[StoredToken]:
            where, params = ("WHERE principal = ?", (principal,)) if principal is not None else ("", ())
            sql = f"SELECT {TOKEN_COLUMNS} FROM tokens {where} ORDER BY created_at, id"
            return [token_of(row) for row in conn.execute(sql, params)]

        return await self._run(tokens)

    async def token_revoke(
        self, ref: str, actor: str, now: float, *, principal: str | None = None
    ) -> StoredToken | None:
        def revoke(conn: sqlite3.Connection) -> StoredToken | None:
            sql = (
                f"UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND (id = ? OR name = ?)"
                f"{' AND principal = ?' if principal is not None else ''} RETURNING {TOKEN_COLUMNS}"
            )
            params: tuple[Any, ...] = (now, ref, ref) + ((principal,) if principal is not None else ())
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            token = token_of(row)
            sqlite_audit.append(conn, token.id, TOKEN_REVOKED, actor, now, dumps(token_details(token)))
            return token

        return await self._write(revoke)

    async def token_count(self, now: float) -> int:
        def count(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "SELECT count(*) FROM tokens WHERE revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > ?)",
                    (now,),
                ).fetchone()[0]
            )

        return await self._run(count)

    async def live_token_exists(self, now: float) -> bool:
        # On the event loop, like the change counter: an indexed probe of a table of a few rows costs
        # microseconds, less than the hop to a reader thread that `token_count` takes.
        try:
            found = (
                self._watching()
                .execute(
                    "SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > ?))",
                    (now,),
                )
                .fetchone()[0]
            )
        except sqlite3.Error as error:
            raise StoreUnavailable(f"the store's tokens cannot be read: {error}") from None
        return bool(found)

    async def session_insert(self, sha256: str, session: StoredSession) -> None:
        await self._write(
            lambda conn: conn.execute(
                f"INSERT INTO sessions (sha256, {SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sha256,
                    session.principal,
                    dumps(list(session.roles)),
                    session.csrf,
                    session.id_token,
                    session.created_at,
                    session.last_seen_at,
                    session.expires_at,
                ),
            )
        )

    async def session_find(self, sha256: str, now: float, idle_seconds: float) -> StoredSession | None:
        def find(conn: sqlite3.Connection) -> StoredSession | None:
            row = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE sha256 = ? AND expires_at > ? "
                "AND last_seen_at > ?",
                (sha256, now, now - idle_seconds),
            ).fetchone()
            return None if row is None else session_of(row)

        return await self._run(find)

    async def session_touch(self, sha256: str, now: float) -> None:
        await self._write(
            lambda conn: conn.execute("UPDATE sessions SET last_seen_at = ? WHERE sha256 = ?", (now, sha256))
        )

    async def session_delete(self, sha256: str) -> bool:
        return await self._write(
            lambda conn: bool(conn.execute("DELETE FROM sessions WHERE sha256 = ?", (sha256,)).rowcount)
        )

    async def session_prune(self, now: float, idle_seconds: float) -> int:
        return await self._write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?",
                    (now, now - idle_seconds),
                ).rowcount
            )
        )

"""Decision links in the SQLite store (`hitl_mcp.store.links`), mixed into `SQLiteStore`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from hitl_mcp.store.links import LinkToken

T = TypeVar("T")

LINK_COLUMNS = "sha256, request_id, principal, arguments_digest, created_at, expires_at, used_at"


def link_of(row: Any) -> LinkToken:
    return LinkToken(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


class SQLiteLinks:
    """The `LinkStore` methods; `SQLiteStore` gives them its reads and writes."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def link_insert(self, link: LinkToken) -> None:
        await self._write(
            lambda conn: conn.execute(
                f"INSERT INTO link_tokens ({LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    link.sha256,
                    link.request_id,
                    link.principal,
                    link.arguments_digest,
                    link.created_at,
                    link.expires_at,
                    link.used_at,
                ),
            )
        )

    async def link_find(self, sha256: str) -> LinkToken | None:
        def find(conn: sqlite3.Connection) -> LinkToken | None:
            sql = f"SELECT {LINK_COLUMNS} FROM link_tokens WHERE sha256 = ?"
            row = conn.execute(sql, (sha256,)).fetchone()
            return None if row is None else link_of(row)

        return await self._run(find)

    async def link_spend(self, sha256: str, now: float) -> bool:
        return await self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE link_tokens SET used_at = ? WHERE sha256 = ? AND used_at IS NULL "
                    "AND expires_at > ?",
                    (now, sha256, now),
                ).rowcount
                == 1
            )
        )

    async def link_prune(self, expired_before: float) -> int:
        return await self._write(
            lambda conn: (
                conn.execute("DELETE FROM link_tokens WHERE expires_at < ?", (expired_before,)).rowcount
            )
        )

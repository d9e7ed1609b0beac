"""Decision links in the PostgreSQL store (`hitl_mcp.store.links`), mixed into `PostgresStore`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from hitl_mcp.store.links import LinkToken
from hitl_mcp.store.postgres_connection import Transaction
from hitl_mcp.store.postgres_rows import Conn
from hitl_mcp.store.sqlite_links import LINK_COLUMNS

T = TypeVar("T")


def _link(row: asyncpg.Record) -> LinkToken:
    return LinkToken(
        row["sha256"],
        row["request_id"],
        row["principal"],
        row["arguments_digest"],
        row["created_at"],
        row["expires_at"],
        row["used_at"],
    )


class PostgresLinks:
    """The `LinkStore` methods; `PostgresStore` gives them its reads and transactions."""

    async def _write(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def link_insert(self, link: LinkToken) -> None:
        async def insert(tx: Transaction) -> None:
            await tx.conn.execute(
                f"INSERT INTO link_tokens ({LINK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                link.sha256,
                link.request_id,
                link.principal,
                link.arguments_digest,
                link.created_at,
                link.expires_at,
                link.used_at,
            )

        await self._write(insert)

    async def link_find(self, sha256: str) -> LinkToken | None:
        async def find(conn: Conn) -> LinkToken | None:
            row = await conn.fetchrow(f"SELECT {LINK_COLUMNS} FROM link_tokens WHERE sha256 = $1", sha256)
            return None if row is None else _link(row)

        return await self._read(find)

    async def link_spend(self, sha256: str, now: float) -> bool:
        async def spend(tx: Transaction) -> bool:
            spent = await tx.conn.fetchval(
                "UPDATE link_tokens SET used_at = $1 WHERE sha256 = $2 AND used_at IS NULL "
                "AND expires_at > $1 RETURNING 1",
                now,
                sha256,
            )
            return spent is not None

        return await self._write(spend)

    async def link_prune(self, expired_before: float) -> int:
        async def prune(tx: Transaction) -> int:
            status = await tx.conn.execute("DELETE FROM link_tokens WHERE expires_at < $1", expired_before)
            return int(status.split()[-1])

        return await self._write(prune)

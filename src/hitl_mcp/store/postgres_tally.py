"""The queue counted for `/metrics` (`hitl_mcp.metrics.Tallied`), mixed into `PostgresStore`: the same
numbers from whichever server on the store is asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from hitl_mcp.metrics import Tally
from hitl_mcp.store.postgres_rows import Conn

T = TypeVar("T")

# As on SQLite (`sqlite_tally`): the pending queue from its partial index (tool, seq), whose oldest per tool
# is one lookup by seq; the other open queues are small.
PENDING_SQL = (
    "SELECT p.tool, p.n, r.created_at FROM (SELECT tool, count(*) AS n, min(seq) AS first FROM requests "
    "WHERE status = 'pending' GROUP BY tool) p JOIN requests r ON r.seq = p.first"
)
OTHER_OPEN_SQL = (
    "SELECT tool, status, count(*), min(created_at) FROM requests "
    "WHERE status IN ('approved', 'executing') GROUP BY tool, status"
)
FINISHED_SQL = (
    "SELECT tool, status, count(*), min(created_at) FROM requests "
    "WHERE status NOT IN ('pending', 'approved', 'executing') GROUP BY tool, status"
)


class PostgresTally:
    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def tally_open(self) -> list[Tally]:
        async def tally(conn: Conn) -> list[Tally]:
            pending = [Tally(row[0], "pending", row[1], row[2]) for row in await conn.fetch(PENDING_SQL)]
            others = [Tally(row[0], row[1], row[2], row[3]) for row in await conn.fetch(OTHER_OPEN_SQL)]
            return pending + others

        return await self._read(tally)

    async def tally_finished(self) -> list[Tally]:
        return await self._tally(FINISHED_SQL)

    async def _tally(self, sql: str) -> list[Tally]:
        async def tally(conn: Conn) -> list[Tally]:
            return [Tally(row[0], row[1], row[2], row[3]) for row in await conn.fetch(sql)]

        return await self._read(tally)

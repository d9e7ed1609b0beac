"""Slack messages in the PostgreSQL store (`hitl_mcp.store.slack_messages`), mixed into `PostgresStore`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from hitl_mcp.store.postgres_connection import Transaction
from hitl_mcp.store.postgres_rows import Conn
from hitl_mcp.store.slack_messages import SlackMessage

T = TypeVar("T")


class PostgresSlackMessages:
    """The `SlackMessageStore` methods; `PostgresStore` gives them its reads and transactions."""

    async def _write(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def slack_message_add(self, message: SlackMessage) -> None:
        async def add(tx: Transaction) -> None:
            await tx.conn.execute(
                "INSERT INTO slack_messages (channel, ts, request_id, posted_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (channel, ts) DO NOTHING",
                message.channel,
                message.ts,
                message.request_id,
                message.posted_at,
            )

        await self._write(add)

    async def slack_messages_of(self, request_id: str) -> list[SlackMessage]:
        async def read(conn: Conn) -> list[SlackMessage]:
            rows = await conn.fetch(
                "SELECT channel, ts, request_id, posted_at FROM slack_messages WHERE request_id = $1 "
                "ORDER BY posted_at, channel, ts",
                request_id,
            )
            return [SlackMessage(r["channel"], r["ts"], r["request_id"], r["posted_at"]) for r in rows]

        return await self._read(read)

"""Slack messages in the SQLite store (`hitl_mcp.store.slack_messages`), mixed into `SQLiteStore`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from hitl_mcp.store.slack_messages import SlackMessage

T = TypeVar("T")


class SQLiteSlackMessages:
    """The `SlackMessageStore` methods; `SQLiteStore` gives them its reads and writes."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def slack_message_add(self, message: SlackMessage) -> None:
        def add(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO slack_messages (channel, ts, request_id, posted_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (channel, ts) DO NOTHING",
                (message.channel, message.ts, message.request_id, message.posted_at),
            )

        await self._write(add)

    async def slack_messages_of(self, request_id: str) -> list[SlackMessage]:
        def read(conn: sqlite3.Connection) -> list[SlackMessage]:
            rows = conn.execute(
                "SELECT channel, ts, request_id, posted_at FROM slack_messages WHERE request_id = ? "
                "ORDER BY posted_at, channel, ts",
                (request_id,),
            ).fetchall()
            return [SlackMessage(*row) for row in rows]

        return await self._run(read)

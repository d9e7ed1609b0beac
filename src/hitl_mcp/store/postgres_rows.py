"""Rows of the PostgreSQL store as the records the gate reads, and values as its columns hold them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from hitl_mcp.models import Decision, Request, utc
from hitl_mcp.store.sqlite_rows import REQUEST_COLUMNS, SUMMARY_COLUMNS, dumps, request_of, summary_of

__all__ = [
    "REQUEST_COLUMNS",
    "SUMMARY_COLUMNS",
    "Conn",
    "decisions_of",
    "dumps",
    "fetch",
    "from_row",
    "summary_from_row",
    "text_in",
    "text_out",
]

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection of the store's own, or one lent by its pool."""

# Where REQUEST_COLUMNS puts the free-text columns held as JSON strings (see 0001_initial.sql).
_SUMMARY, _ERROR = 5, 13
_LINE_SUMMARY = 4  # and where SUMMARY_COLUMNS puts `summary`


def text_in(value: str | None) -> str | None:
    """Free text (which may hold NUL) as its column holds it: one JSON string."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


def text_out(value: str | None) -> str | None:
    if value is None:
        return None
    text: str = json.loads(value)
    return text


def _values(row: asyncpg.Record) -> tuple[Any, ...]:
    values = list(row.values())
    values[_SUMMARY] = text_out(values[_SUMMARY])
    values[_ERROR] = text_out(values[_ERROR])
    return tuple(values)


def from_row(row: asyncpg.Record, decisions: list[Decision]) -> Request:
    return request_of(_values(row), decisions)


def summary_from_row(row: asyncpg.Record, decisions: list[Decision]) -> dict[str, Any]:
    """A row of SUMMARY_COLUMNS as its queue line."""
    values = list(row.values())
    values[_LINE_SUMMARY] = text_out(values[_LINE_SUMMARY])
    return summary_of(tuple(values), decisions)


async def fetch(conn: Conn, request_id: str) -> Request | None:
    row = await conn.fetchrow(f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1", request_id)
    if row is None:
        return None
    return from_row(row, (await decisions_of(conn, [request_id])).get(request_id, []))


async def decisions_of(conn: Conn, request_ids: Sequence[str]) -> dict[str, list[Decision]]:
    if not request_ids:
        return {}
    found: dict[str, list[Decision]] = {}
    rows = await conn.fetch(
        "SELECT request_id, principal, verdict, reason, decided_at, roles, level, edit FROM decisions "
        "WHERE request_id = ANY($1::text[]) ORDER BY id",
        list(request_ids),
    )
    for request_id, principal, verdict, reason, decided_at, roles, level, edit in rows:
        found.setdefault(request_id, []).append(
            Decision(
                principal=principal,
                verdict=verdict,
                reason=text_out(reason),
                decided_at=utc(decided_at),
                roles=json.loads(roles),
                level_index=level,
                changes=None if edit is None else json.loads(edit),
            )
        )
    return found


def json_or_none(value: Any) -> str | None:
    return None if value is None else dumps(value)

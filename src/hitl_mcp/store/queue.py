"""The queue read at volume: text search over arguments and summaries, and the queue's counts grouped by
the rule and level each request waits on — each one aggregate or keyset query in the store, never a walk
over every row in Python.

Both run through the store's own read snapshot (SQLite's `_run`, PostgreSQL's `_read`): they are reads
of this package's own tables, kept beside the store rather than in its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from hitl_mcp.config import fold_principal
from hitl_mcp.models import Status

if TYPE_CHECKING:
    from hitl_mcp.store import Page, Store

MAX_SEARCH = 200


@dataclass(frozen=True)
class WaitingGroup:
    """Pending, unexpired requests under one rule (`policy`, its snapshot as stored) waiting on one level
    (`level`, -1 when the rule names none): `total` of them, `open_to` of which neither were filed by nor
    already decided by the principal asked about."""

    policy: str
    level: int
    total: int
    open_to: int


def like_pattern(text: str) -> str:
    """`text` as a LIKE pattern that matches it anywhere, its own `%`, `_` and `\\` taken literally (the
    queries say ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search(
    store: Store,
    statuses: Sequence[Status] | None,
    tool: str | None,
    text: str,
    limit: int,
    cursor: str | None,
) -> Page:
    """`Store.page` narrowed to requests whose arguments or summary hold `text` (case-insensitive)."""
    from hitl_mcp.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from hitl_mcp.store import sqlite_queue

        return await store._run(partial(sqlite_queue.search, statuses, tool, text, limit, cursor))
    from hitl_mcp.store import postgres_queue
    from hitl_mcp.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        return await store._read(partial(postgres_queue.search, statuses, tool, text, limit, cursor))
    raise TypeError(f"{type(store).__name__} cannot search its queue")


async def waiting_groups(store: Store, principal: str, now: float) -> list[WaitingGroup]:
    """The pending queue, unexpired, counted per rule and level, and how much of it `principal` has not
    filed or decided: whether they may decide a group is the policy's question (`policy.check_eligible`),
    asked once per group by the caller."""
    from hitl_mcp.store.sqlite import SQLiteStore

    me = fold_principal(principal)
    if isinstance(store, SQLiteStore):
        from hitl_mcp.store import sqlite_queue

        return await store._run(partial(sqlite_queue.waiting_groups, me, now))
    from hitl_mcp.store import postgres_queue
    from hitl_mcp.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        return await store._read(partial(postgres_queue.waiting_groups, me, now))
    raise TypeError(f"{type(store).__name__} cannot count its queue")

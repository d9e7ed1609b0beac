"""`hitl_mcp.store.queue`'s reads in SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from hitl_mcp.models import Status
from hitl_mcp.queue_rows import page_where
from hitl_mcp.store import Page
from hitl_mcp.store.queue import WaitingGroup, like_pattern
from hitl_mcp.store.sqlite_rows import REQUEST_COLUMNS, decisions_of, request_of

# A request with no decision yet has never been updated since it was filed: the decisions index is looked
# up only for those that have (a few, in a queue of thousands), which keeps the count one pass over the
# pending rows. CASE, unlike OR, is guaranteed to stop at its first true branch.
WAITING_GROUPS = """
SELECT policy, level, count(*),
       sum(CASE WHEN lower(requested_by) = ?1 THEN 0
                WHEN updated_at = created_at THEN 1
                WHEN EXISTS (SELECT 1 FROM decisions d WHERE d.request_id = r.id AND lower(d.principal) = ?1)
                THEN 0
                ELSE 1 END)
FROM requests r WHERE status = 'pending' AND expires_at > ?2
GROUP BY policy, level
"""


def search(
    statuses: Sequence[Status] | None,
    tool: str | None,
    text: str,
    limit: int,
    cursor: str | None,
    conn: sqlite3.Connection,
) -> Page:
    where, params = page_where(statuses, tool, cursor)
    pattern = like_pattern(text)
    rows = conn.execute(
        f"SELECT {REQUEST_COLUMNS} FROM requests WHERE {where} "
        "AND (summary LIKE ? ESCAPE '\\' OR arguments LIKE ? ESCAPE '\\') ORDER BY seq LIMIT ?",
        [*params, pattern, pattern, limit + 1],
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    decisions = decisions_of(conn, [row[1] for row in rows])
    return Page(
        [request_of(row, decisions.get(row[1], [])) for row in rows], str(rows[-1][0]) if more else None
    )


def waiting_groups(me: str, now: float, conn: sqlite3.Connection) -> list[WaitingGroup]:
    return [
        WaitingGroup(policy, int(level), int(total), int(open_to or 0))
        for policy, level, total, open_to in conn.execute(WAITING_GROUPS, (me, now))
    ]

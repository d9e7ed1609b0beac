"""`hitl_mcp.store.queue`'s reads in PostgreSQL. `summary` and `arguments` are `json` columns: searched as
their text, which keeps what was written (a summary is one JSON string, quotes and all)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hitl_mcp.models import Status
from hitl_mcp.store import Page
from hitl_mcp.store.postgres_rows import REQUEST_COLUMNS, Conn, decisions_of, from_row
from hitl_mcp.store.queue import WaitingGroup, like_pattern

# As in SQLite (sqlite_queue.WAITING_GROUPS): the decisions index only for requests updated since filing.
WAITING_GROUPS = """
SELECT policy::text AS policy, level, count(*) AS total,
       count(*) FILTER (WHERE CASE WHEN lower(requested_by) = $1 THEN false
                                   WHEN updated_at = created_at THEN true
                                   ELSE NOT EXISTS (SELECT 1 FROM decisions d
                                                    WHERE d.request_id = r.id AND lower(d.principal) = $1)
                              END) AS open_to
FROM requests r WHERE status = 'pending' AND expires_at > $2
GROUP BY policy::text, level
"""


async def search(
    statuses: Sequence[Status] | None,
    tool: str | None,
    text: str,
    limit: int,
    cursor: str | None,
    conn: Conn,
) -> Page:
    params: list[Any] = [int(cursor) if cursor else 0, like_pattern(text)]
    clauses = ["seq > $1", "(summary::text ILIKE $2 ESCAPE '\\' OR arguments::text ILIKE $2 ESCAPE '\\')"]
    if statuses is not None:
        params.append([status.value for status in statuses])
        clauses.append(f"status = ANY(${len(params)}::text[])")
    if tool is not None:
        params.append(tool)
        clauses.append(f"tool = ${len(params)}")
    params.append(limit + 1)
    rows = await conn.fetch(
        f"SELECT {REQUEST_COLUMNS} FROM requests WHERE {' AND '.join(clauses)} ORDER BY seq "
        f"LIMIT ${len(params)}",
        *params,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    decisions = await decisions_of(conn, [row["id"] for row in rows])
    return Page(
        [from_row(row, decisions.get(row["id"], [])) for row in rows], str(rows[-1]["seq"]) if more else None
    )


async def waiting_groups(me: str, now: float, conn: Conn) -> list[WaitingGroup]:
    # The correlated subquery's estimate crosses jit_above_cost at a few thousand rows, and compiling it
    # took half the query's time at 100,000 pending (400 of 800 ms): this one read runs without.
    await conn.execute("SET LOCAL jit = off")
    rows = await conn.fetch(WAITING_GROUPS, me, now)
    return [
        WaitingGroup(row["policy"], int(row["level"]), int(row["total"]), int(row["open_to"])) for row in rows
    ]

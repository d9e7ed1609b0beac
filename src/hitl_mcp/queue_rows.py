"""The queue as lines, read straight from the SQLite store's rows: the page query and each row's line
(the JSON form of `RequestSummary`), with no model in between.

Outside `hitl_mcp.store` and free of pydantic, because two callers share it: the SQLite store answering
`summaries` for every face, and `hitl list` reading a store on its own quick path, whose start-up must not
pay for the models (`hitl_mcp.cli.quick_list`)."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hitl_mcp.levels import NEEDS_DECISION, Approver, StoredLevel, describe, progress
from hitl_mcp.status import Status

# The most rows one page of requests holds, whoever asks (the gate refuses a larger limit).
MAX_PAGE = 200

# What a queue line needs of a row, in `summary_line`'s order: `summary` is the fifth.
SUMMARY_COLUMNS = (
    "seq, id, tool, arguments, summary, status, requested_by, created_at, expires_at, policy, level, "
    "escalated_level"
)


def open_reader(
    path: Path, *, timeout: float = 5.0, factory: type[sqlite3.Connection] = sqlite3.Connection
) -> sqlite3.Connection:
    """A connection to an existing store that only reads. On a read-only folder SQLite cannot make the
    WAL index (-shm) a reader needs; a store closed cleanly (no -wal left) is then read as the file
    holds it."""

    def connect(mode: str) -> sqlite3.Connection:
        uri = f"{path.as_uri()}?mode={mode}"
        conn = sqlite3.connect(
            uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False, factory=factory
        )
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    try:
        return connect("ro")
    except sqlite3.OperationalError as error:
        wal = path.with_name(path.name + "-wal")
        unsaved = wal.exists() and wal.stat().st_size > 0
        if getattr(error, "sqlite_errorcode", None) != sqlite3.SQLITE_CANTOPEN or unsaved:
            raise
        return connect("ro&immutable=1")


def page_where(
    statuses: Sequence[Status] | None, tool: str | None, cursor: str | None
) -> tuple[str, list[Any]]:
    """The WHERE clause of a page of requests (and of the count after one), oldest first after `cursor`."""
    clauses = ["seq > ?"]
    params: list[Any] = [int(cursor) if cursor else 0]
    if statuses is not None:
        clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
        params.extend(status.value for status in statuses)
    if tool is not None:
        clauses.append("tool = ?")
        params.append(tool)
    return " AND ".join(clauses), params


def page_rows(
    conn: sqlite3.Connection,
    columns: str,
    statuses: Sequence[Status] | None,
    tool: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """A page's rows of `columns` (seq and id first), oldest first after `cursor`, and the next page's
    cursor (None: this is the last)."""
    where, params = page_where(statuses, tool, cursor)
    rows = conn.execute(
        f"SELECT {columns} FROM requests WHERE {where} ORDER BY seq LIMIT ?", [*params, limit + 1]
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, str(rows[-1][0]) if more else None


def count_after(
    conn: sqlite3.Connection, statuses: Sequence[Status] | None, tool: str | None, cursor: str | None
) -> int:
    """How many requests the listing has after `cursor`."""
    where, params = page_where(statuses, tool, cursor)
    return int(conn.execute(f"SELECT count(*) FROM requests WHERE {where}", params).fetchone()[0])


def summary_page(
    conn: sqlite3.Connection,
    statuses: Sequence[Status] | None,
    tool: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the queue as its lines, and the next page's cursor."""
    rows, next_cursor = page_rows(conn, SUMMARY_COLUMNS, statuses, tool, limit, cursor)
    approvals = _approvers_of(conn, [row[1] for row in rows])
    return [summary_line(row, approvals.get(row[1], ())) for row in rows], next_cursor


def _approvers_of(conn: sqlite3.Connection, request_ids: list[str]) -> dict[str, list[Approver]]:
    if not request_ids:
        return {}
    found: dict[str, list[Approver]] = {}
    placeholders = ", ".join("?" for _ in request_ids)
    # In the order they were made, as `progress` counts them.
    for request_id, principal, roles in conn.execute(
        f"SELECT request_id, principal, roles FROM decisions "
        f"WHERE request_id IN ({placeholders}) AND verdict = 'approve' ORDER BY rowid",
        request_ids,
    ):
        found.setdefault(request_id, []).append(Approver(principal, tuple(json.loads(roles))))
    return found


def iso(timestamp: float) -> str:
    """A timestamp as the JSON text a record's datetime serialises to (pydantic's form, `Z` for UTC)."""
    text = datetime.fromtimestamp(timestamp, UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def summary_line(row: sqlite3.Row | tuple[Any, ...], approvers: Sequence[Approver]) -> dict[str, Any]:
    """A row of SUMMARY_COLUMNS as the JSON form of its `RequestSummary`: a page of 50 lines is answered
    several times faster than from whole records."""
    (
        _seq,
        request_id,
        tool,
        arguments,
        summary,
        status,
        requested_by,
        created_at,
        expires_at,
        policy,
        level,
        escalated_level,
    ) = row
    return {
        "request_id": request_id,
        "tool": tool,
        "status": status,
        "summary": summary,
        "arguments": json.loads(arguments),
        "requested_by": requested_by,
        "created_at": iso(created_at),
        "expires_at": iso(expires_at),
        "waits_on": may_decide(policy, approvers),
        "escalated": escalated_level is not None and escalated_level == level,
    }


def may_decide(policy: str, approvers: Sequence[Approver]) -> str | None:
    """Who may decide the level a request under the stored `policy` waits on, after `approvers`; None
    when it waits on none (its policy needs no decision, or every level is filled)."""
    return _waits_on(policy, approvers) if approvers else _undecided(policy)


@functools.lru_cache(maxsize=1024)
def _undecided(policy: str) -> str | None:
    # The many requests under one rule that nobody has approved yet share the answer.
    return _waits_on(policy, ())


def _waits_on(policy: str, approvers: Sequence[Approver]) -> str | None:
    needs_decision, levels = _stored_levels(policy)
    waiting_on = progress(levels, approvers).waiting_on if needs_decision else None
    return None if waiting_on is None else describe(levels[waiting_on])


@functools.lru_cache(maxsize=1024)
def _stored_levels(policy: str) -> tuple[bool, tuple[StoredLevel, ...]]:
    """Whether a stored policy snapshot waits on levels, and its levels."""
    snapshot = json.loads(policy)
    levels = tuple(
        StoredLevel(tuple(level.get("roles", ())), int(level.get("count", 1)))
        for level in snapshot.get("levels", ())
    )
    return snapshot["approval"] in NEEDS_DECISION, levels

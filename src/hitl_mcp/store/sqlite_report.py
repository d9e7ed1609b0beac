"""The report's running totals in a SQLite store, kept by triggers on the audit trail.

`hitl_mcp.report.build` folds the trail record by record; these triggers run the same fold as each record
is written, inside the transaction that writes it, into three small tables (SCHEMA in sqlite_schema.py):
`report_requests` (per request: tool, first record's time, status now, verdict, time to first decision,
flags), `report_events` (per request, how many records of each event) and `report_votes` (per request,
each approver's approve and reject records, confirmations aside). A report then reads about one row per
request instead of every record: SQLite scans a quarter of a million audit records in more time than a
report may take, and the fold is cheap at write time. Records leave the trail only by `hitl db archive`,
which takes whole requests: the delete trigger takes their rows away with them.

At every upgrade of a store (schema 7 brought these tables) they are filled afresh from the whole trail by
the aggregate statement PostgreSQL runs at read time (report_sql.py), which computes the same fold.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from hitl_mcp.report import DECISIONS, NOTICES, STATUS_AFTER, UNKNOWN_TOOL
from hitl_mcp.store.report_sql import (
    PERCENTILES,
    ReportRows,
    json_text,
    json_truthy,
    nearest_rank,
    per_request,
    quote,
    quoted_list,
    rows_of,
)

_NEW_STATUS = (
    f"CASE WHEN NEW.event = 'approved' THEN COALESCE({json_text('sqlite', 'NEW.details', 'status')}, "
    "'approved') ELSE CASE NEW.event "
    + " ".join(f"WHEN {quote(event)} THEN {quote(status)}" for event, status in STATUS_AFTER.items())
    + " END END"
)
_MOVES = quoted_list(sorted({*STATUS_AFTER, *DECISIONS}))
_DECISIONS = quoted_list(DECISIONS)
_NOTICES = quoted_list(sorted(NOTICES))

TRIGGERS = (
    f"""
CREATE TRIGGER IF NOT EXISTS report_fold AFTER INSERT ON audit
WHEN NEW.event NOT IN {_NOTICES}
BEGIN
    INSERT INTO report_requests (request_id, tool, first_at, filed_at, status)
    VALUES (
        NEW.request_id,
        COALESCE({json_text("sqlite", "NEW.details", "tool")}, {quote(UNKNOWN_TOOL)}),
        NEW.at,
        CASE WHEN NEW.event = 'filed' THEN NEW.at END,
        'pending'
    )
    ON CONFLICT (request_id) DO NOTHING;
    UPDATE report_requests SET
        status = CASE WHEN NEW.event IN {_MOVES} THEN {_NEW_STATUS} ELSE status END,
        verdict = CASE
            WHEN NEW.event = 'rejected' THEN 'rejected'
            WHEN NEW.event = 'approved' AND verdict IS NULL AND {_NEW_STATUS} <> 'pending' THEN 'approved'
            ELSE verdict END,
        wait = CASE WHEN NEW.event IN {_DECISIONS} AND decided = 0 AND filed_at IS NOT NULL
            THEN NEW.at - filed_at ELSE wait END,
        decided = CASE WHEN NEW.event IN {_DECISIONS} THEN 1 ELSE decided END,
        expired = CASE WHEN NEW.event = 'expired' THEN 1 ELSE expired END,
        escalated = CASE WHEN NEW.event = 'escalated' THEN 1 ELSE escalated END
    WHERE request_id = NEW.request_id;
    INSERT INTO report_events (request_id, event, n) VALUES (NEW.request_id, NEW.event, 1)
    ON CONFLICT (request_id, event) DO UPDATE SET n = n + 1;
    INSERT INTO report_votes (request_id, actor, event, n)
    SELECT NEW.request_id, NEW.actor, NEW.event, 1
    WHERE NEW.event IN {_DECISIONS} AND {json_truthy("sqlite", "NEW.details", "confirmation")} = 0
    ON CONFLICT (request_id, actor, event) DO UPDATE SET n = n + 1;
END
""",
    """
CREATE TRIGGER IF NOT EXISTS report_unfold AFTER DELETE ON audit
BEGIN
    DELETE FROM report_requests WHERE request_id = OLD.request_id;
    DELETE FROM report_events WHERE request_id = OLD.request_id;
    DELETE FROM report_votes WHERE request_id = OLD.request_id;
END
""",
)

# The trail is the truth: whatever totals a store holds are replaced by the fold of its whole trail.
_BACKFILL = (
    "DELETE FROM report_requests",
    "DELETE FROM report_events",
    "DELETE FROM report_votes",
    f"""
INSERT INTO report_requests (request_id, tool, first_at, filed_at, status, verdict, decided, wait, expired,
    escalated)
{per_request("sqlite", windowed=False)}
SELECT request_id, tool, first_at, filed_at, status, verdict, decided, wait, expired, escalated FROM r
""",
    f"""
INSERT INTO report_events (request_id, event, n)
SELECT request_id, event, count(*) FROM audit WHERE event NOT IN {_NOTICES} GROUP BY request_id, event
""",
    f"""
INSERT INTO report_votes (request_id, actor, event, n)
SELECT request_id, actor, event, count(*) FROM audit
WHERE event IN {_DECISIONS} AND {json_truthy("sqlite", "details", "confirmation")} = 0
GROUP BY request_id, actor, event
""",
)


def install(conn: sqlite3.Connection, *, backfill: bool) -> None:
    """(Re)create the triggers (the tables are in SCHEMA); with `backfill`, fill the tables from the trail
    already there. Runs in the transaction that creates or upgrades the store: every upgrade writes the
    triggers of this version's fold (`report.STATUS_AFTER`, `NOTICES`, `DECISIONS`) and refolds the trail,
    so a change to the fold ships with a schema version."""
    for name in ("report_fold", "report_unfold"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for statement in TRIGGERS:
        conn.execute(statement)
    # Notices (about no request) are counted from the trail itself: an index of those records alone, so
    # counting them reads a handful of entries and the trail's other records cost no index space.
    conn.execute("DROP INDEX IF EXISTS audit_notices")
    conn.execute(f"CREATE INDEX audit_notices ON audit (event, at) WHERE event IN {_NOTICES}")
    if backfill:
        for statement in _BACKFILL:
            conn.execute(statement)


def read(conn: sqlite3.Connection, since: float | None) -> ReportRows:
    """The report's figures from the running totals, in the read transaction `conn` is in. Each query is
    an index walk or a scan of one narrow row per request: no sort of the whole trail."""
    params = {"since": since}
    window = "" if since is None else " WHERE first_at >= :since"
    rows: list[tuple[Any, ...]] = [
        ("o", tool, status, count, None)
        for tool, status, count in conn.execute(
            f"SELECT tool, status, count(*) FROM report_requests{window} GROUP BY tool, status", params
        )
    ]
    approved, rejected, expired, escalated, timed = conn.execute(
        "SELECT count(CASE WHEN verdict = 'approved' THEN 1 END), count(CASE WHEN verdict = 'rejected' "
        "THEN 1 END), COALESCE(sum(expired), 0), COALESCE(sum(escalated), 0), count(wait) "
        f"FROM report_requests{window}",
        params,
    ).fetchone()
    rows += [("v", "approved", None, approved, None), ("v", "rejected", None, rejected, None)]
    rows += [("x", None, None, expired, None), ("y", None, None, escalated, None)]
    rows.append(("z", None, None, timed, None))
    in_window = "" if since is None else " AND first_at >= :since"
    for p in PERCENTILES if timed else ():
        rank = nearest_rank(p, timed)
        # The partial index on wait walks to the rank: the waits are never sorted here.
        (wait,) = conn.execute(
            f"SELECT wait FROM report_requests WHERE wait IS NOT NULL{in_window} ORDER BY wait "
            "LIMIT 1 OFFSET :offset",
            {**params, "offset": rank - 1},
        ).fetchone()
        rows.append(("p", None, None, rank, wait))
    requests = ""
    if since is not None:
        requests = " WHERE request_id IN (SELECT request_id FROM report_requests WHERE first_at >= :since)"
    rows += [
        ("a", actor, event, count, None)
        for actor, event, count in conn.execute(
            f"SELECT actor, event, sum(n) FROM report_votes{requests} GROUP BY actor, event", params
        )
    ]
    notices_window = "" if since is None else " AND at >= :since"
    events = conn.execute(
        f"SELECT event, sum(n) FROM report_events{requests} GROUP BY event "
        f"UNION ALL SELECT event, count(*) FROM audit WHERE event IN {_NOTICES}{notices_window} "
        "GROUP BY event",
        params,
    ).fetchall()
    rows += [("e", event, None, count, None) for event, count in events]
    return rows_of(rows)

"""The report's running totals in a SQLite store, kept by triggers on the audit trail.

`hitl_mcp.report.build` folds the trail record by record; these triggers run the same fold as each record
is written, inside the transaction that writes it, into three small tables (SCHEMA in sqlite_schema.py):
`report_requests` (per request: tool, first record's time, status now, verdict, time to first decision,
flags), `report_events` (per request, how many records of each event) and `report_votes` (per request,
each approver's approve and reject records, confirmations aside). A report then reads about one row per
request instead of every record: SQLite scans a quarter of a million audit records in more time than a
report may take, and the fold is cheap at write time. Records leave the trail only by `hitl db archive`,
which takes whole requests: the delete trigger takes their rows away with them.

A store made before these tables existed gets them filled once, at its upgrade, from the whole trail by the
aggregate statement PostgreSQL runs at read time (report_sql.py), which computes the same fold.
"""

from __future__ import annotations

import sqlite3

from hitl_mcp.report import DECISIONS, NOTICES, STATUS_AFTER, UNKNOWN_TOOL
from hitl_mcp.store.report_sql import json_text, json_truthy, per_request, quote, quoted_list

# The schema version that brought these tables: a store upgraded from before it is filled once.
SINCE = 7

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
    """Create the triggers (the tables are in SCHEMA); with `backfill`, fill the tables from the trail
    already there. Runs in the transaction that creates or upgrades the store."""
    for statement in TRIGGERS:
        conn.execute(statement)
    if backfill:
        for statement in _BACKFILL:
            conn.execute(statement)

"""The report's running totals in a SQLite store, kept by triggers on the audit trail.

`hitl_mcp.report.build` folds the trail record by record; these triggers keep the same figures as each
record is written, inside the transaction that writes it, as counts per hour of filing (the hour of a
request's first record) rather than rows per request: `report_totals` (requests per tool and status, per
verdict, expired, escalated; approvers' decisions; records per event), `report_waits` (how many requests
waited each time to their first decision, in the order the percentiles walk) and `report_buckets` (the
first and last seq of the requests first recorded in each hour). A store holds a few dozen such rows an
hour whatever its traffic, where one row per request and per event cost more bytes than the request's own
audit records' index (schema 7).

A request's fold is read from its own records through the trail's `audit_request` index: a trigger folds
the request's records without the one written (or deleted) and with it, and adds the difference. So an
archive, which deletes whole requests in any order, takes their totals away exactly, and a status that a
record moves comes off one count as it goes onto another.

A report without a window adds the counts up. A window starting at `since` adds up the hours after since's
hour, and folds the requests first recorded in since's own hour, at or after since, from their records
(found between that hour's first and last seq): at most an hour of the trail.

At every upgrade of a store the totals are filled afresh from the whole trail by the aggregate statement
PostgreSQL runs at read time (report_sql.py), which computes the same fold.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
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

BUCKET_SECONDS = 3600
_NOTICES = quoted_list(sorted(NOTICES))
MOVES = frozenset({*STATUS_AFTER, *DECISIONS})
_DECISIONS = quoted_list(DECISIONS)
_COLUMNS = "seq, event, actor, at, details"


def _among(column: str, values: Iterable[str]) -> str:
    # Spelled out, not `IN (…)`: SQLite builds a lookup table for an IN list each time a subquery holding
    # one runs, which made a trigger's fold take a millisecond instead of tens of microseconds.
    return "(" + " OR ".join(f"{column} = {quote(value)}" for value in sorted(values)) + ")"


def _not_among(column: str, values: Iterable[str]) -> str:
    return "(" + " AND ".join(f"{column} <> {quote(value)}" for value in sorted(values)) + ")"


def _bucket(at: str) -> str:
    # Times are seconds since the epoch, positive: truncation is the floor, the same in SQL and here.
    return f"CAST(({at}) / {BUCKET_SECONDS} AS INTEGER)"


def _approved_status(details: str) -> str:
    return f"COALESCE({json_text('sqlite', details, 'status')}, 'approved')"


def _status(alias: str) -> str:
    mapped = " ".join(f"WHEN {quote(event)} THEN {quote(status)}" for event, status in STATUS_AFTER.items())
    return (
        f"CASE WHEN {alias}.event = 'approved' THEN {_approved_status(alias + '.details')} "
        f"ELSE CASE {alias}.event {mapped} END END"
    )


def _fold(src: str) -> str:
    """One row (none for no records): the fold of the records `src` selects, all of one request."""
    return f"""
SELECT {_bucket("f.at")} AS bucket, f.seq AS first_seq,
    COALESCE({json_text("sqlite", "f.details", "tool")}, {quote(UNKNOWN_TOOL)}) AS tool,
    COALESCE((SELECT {_status("m")} FROM ({src}) AS m WHERE {_among("m.event", MOVES)}
        ORDER BY m.seq DESC LIMIT 1), 'pending') AS status,
    CASE WHEN EXISTS (SELECT 1 FROM ({src}) AS s WHERE s.event = 'rejected') THEN 'rejected'
        WHEN EXISTS (SELECT 1 FROM ({src}) AS s WHERE s.event = 'approved'
            AND {_approved_status("s.details")} <> 'pending') THEN 'approved' END AS verdict,
    CASE WHEN f.event = 'filed' THEN (SELECT d.at FROM ({src}) AS d WHERE {_among("d.event", DECISIONS)}
        ORDER BY d.seq LIMIT 1) - f.at END AS wait,
    EXISTS (SELECT 1 FROM ({src}) AS s WHERE s.event = 'expired') AS expired,
    EXISTS (SELECT 1 FROM ({src}) AS s WHERE s.event = 'escalated') AS escalated,
    CASE WHEN f.event = 'filed' THEN f.at END AS filed_at,
    EXISTS (SELECT 1 FROM ({src}) AS s WHERE {_among("s.event", DECISIONS)}) AS decided
FROM (SELECT seq, event, at, details FROM ({src}) AS s0 ORDER BY seq LIMIT 1) AS f
LIMIT 1"""


def _first_bucket(src: str) -> str:
    return f"(SELECT {_bucket('at')} FROM ({src}) AS s1 ORDER BY seq LIMIT 1)"


def _request_totals(src: str, sign: int) -> str:
    """The (kind, bucket, a, b, n) rows the request `src` selects adds to `report_totals`, times `sign`."""
    return f"""
SELECT k.kind AS kind, r.bucket AS bucket,
    CASE k.kind WHEN 'o' THEN r.tool WHEN 'v' THEN r.verdict ELSE '' END AS a,
    CASE k.kind WHEN 'o' THEN r.status ELSE '' END AS b, {sign} AS n
FROM ({_fold(src)}) AS r,
    (SELECT 'o' AS kind UNION ALL SELECT 'v' UNION ALL SELECT 'x' UNION ALL SELECT 'y') AS k
WHERE k.kind = 'o' OR (k.kind = 'v' AND r.verdict IS NOT NULL) OR (k.kind = 'x' AND r.expired)
    OR (k.kind = 'y' AND r.escalated)"""


def _record_totals(src: str, sign: int, bucket: str) -> str:
    """The rows the records `src` selects add per event and per approver's decision, in `bucket`."""
    return f"""
SELECT 'e' AS kind, {bucket} AS bucket, event AS a, '' AS b, {sign} * count(*) AS n
FROM ({src}) AS s2 GROUP BY event
UNION ALL
SELECT 'a', {bucket}, actor, event, {sign} * count(*) FROM ({src}) AS s3
WHERE {_among("event", DECISIONS)} AND {json_truthy("sqlite", "details", "confirmation")} = 0
GROUP BY actor, event"""


def _apply(before: str, after: str, records: str) -> tuple[str, ...]:
    """Statements that move the totals from the fold of `before` to that of `after` (one request's
    records without and with the record written or deleted); `records` gives the per-record counts."""
    return (
        f"""
INSERT INTO report_totals (kind, bucket, a, b, n)
SELECT kind, bucket, a, b, sum(n) FROM (
    {_request_totals(before, -1)}
    UNION ALL
    {_request_totals(after, 1)}
) AS t
GROUP BY kind, bucket, a, b HAVING sum(n) <> 0
ON CONFLICT (kind, bucket, a, b) DO UPDATE SET n = n + excluded.n""",
        # Apart from the statement above: SQLite ran the two as one union ten times slower.
        f"""
INSERT INTO report_totals (kind, bucket, a, b, n)
SELECT kind, bucket, a, b, sum(n) FROM ({records}) AS t
GROUP BY kind, bucket, a, b HAVING sum(n) <> 0
ON CONFLICT (kind, bucket, a, b) DO UPDATE SET n = n + excluded.n""",
        f"""
INSERT INTO report_waits (wait, bucket, n)
SELECT wait, bucket, sum(n) FROM (
    SELECT wait, bucket, -1 AS n FROM ({_fold(before)}) AS r WHERE wait IS NOT NULL
    UNION ALL
    SELECT wait, bucket, 1 FROM ({_fold(after)}) AS r WHERE wait IS NOT NULL
) AS t
GROUP BY wait, bucket HAVING sum(n) <> 0
ON CONFLICT (wait, bucket) DO UPDATE SET n = n + excluded.n""",
        f"""
INSERT INTO report_buckets (bucket, first_seq, last_seq)
SELECT bucket, first_seq, first_seq FROM ({_fold(after)}) AS r WHERE true
ON CONFLICT (bucket) DO UPDATE SET first_seq = min(first_seq, excluded.first_seq),
    last_seq = max(last_seq, excluded.last_seq)""",
    )


def _last(row: str, sign: int) -> str:
    """The statements for the record `row` (NEW or OLD) that comes after every other record of its
    request, as hitl writes them and as an archive deletes them last first: the fold of the request's
    earlier records, moved on by that record, added (`sign` 1) or taken away (-1)."""
    earlier = (
        f"SELECT {_COLUMNS} FROM audit WHERE request_id = {row}.request_id AND seq < {row}.seq "
        f"AND {_not_among('event', NOTICES)}"
    )
    moves = _among(f"{row}.event", MOVES)
    decision = _among(f"{row}.event", DECISIONS)
    confirmed = json_truthy("sqlite", f"{row}.details", "confirmation")
    # One row, whether or not the request had records before (then `status` is NULL).
    state = f"""
SELECT COALESCE(p.bucket, {_bucket(f"{row}.at")}) AS bucket,
    COALESCE(p.tool, {json_text("sqlite", f"{row}.details", "tool")}, {quote(UNKNOWN_TOOL)}) AS tool,
    p.status AS status,
    CASE WHEN {moves} THEN {_status(row)} ELSE COALESCE(p.status, 'pending') END AS new_status,
    p.verdict AS verdict,
    CASE WHEN {row}.event = 'rejected' THEN 'rejected'
        WHEN p.verdict IS NULL AND {row}.event = 'approved'
            AND {_approved_status(f"{row}.details")} <> 'pending' THEN 'approved'
        ELSE p.verdict END AS new_verdict,
    COALESCE(p.expired, 0) AS expired, COALESCE(p.escalated, 0) AS escalated
FROM (SELECT 1) AS one LEFT JOIN ({_fold(earlier)}) AS p ON 1"""
    kinds = " UNION ALL ".join(
        f"SELECT '{kind}' AS kind, {step} AS sign"
        for kind, step in (("o", -1), ("o", 1), ("v", -1), ("v", 1), ("x", 1), ("y", 1), ("e", 1), ("a", 1))
    )
    totals = f"""
INSERT INTO report_totals (kind, bucket, a, b, n)
SELECT kind, bucket, a, b, sum(n) FROM (
    SELECT k.kind AS kind, r.bucket AS bucket,
        CASE k.kind WHEN 'o' THEN r.tool
            WHEN 'v' THEN CASE WHEN k.sign < 0 THEN r.verdict ELSE r.new_verdict END
            WHEN 'e' THEN {row}.event WHEN 'a' THEN {row}.actor ELSE '' END AS a,
        CASE k.kind WHEN 'o' THEN CASE WHEN k.sign < 0 THEN r.status ELSE r.new_status END
            WHEN 'a' THEN {row}.event ELSE '' END AS b,
        k.sign * {sign} AS n
    FROM ({state}) AS r, ({kinds}) AS k
    WHERE (k.kind = 'o' AND (k.sign > 0 OR r.status IS NOT NULL))
        OR (k.kind = 'v' AND CASE WHEN k.sign < 0 THEN r.verdict ELSE r.new_verdict END IS NOT NULL)
        OR (k.kind = 'x' AND {row}.event = 'expired' AND NOT r.expired)
        OR (k.kind = 'y' AND {row}.event = 'escalated' AND NOT r.escalated)
        OR k.kind = 'e'
        OR (k.kind = 'a' AND {decision} AND {confirmed} = 0)
) AS t
GROUP BY kind, bucket, a, b HAVING sum(n) <> 0
ON CONFLICT (kind, bucket, a, b) DO UPDATE SET n = n + excluded.n"""
    # A request's first decision gives its wait, when its first record was its filing.
    waits = f"""
INSERT INTO report_waits (wait, bucket, n)
SELECT {row}.at - p.filed_at, p.bucket, {sign} FROM ({_fold(earlier)}) AS p
WHERE {decision} AND NOT p.decided AND p.filed_at IS NOT NULL
ON CONFLICT (wait, bucket) DO UPDATE SET n = n + excluded.n"""
    buckets = f"""
INSERT INTO report_buckets (bucket, first_seq, last_seq)
SELECT {_bucket(f"{row}.at")}, {row}.seq, {row}.seq WHERE NOT EXISTS ({earlier})
ON CONFLICT (bucket) DO UPDATE SET first_seq = min(first_seq, excluded.first_seq),
    last_seq = max(last_seq, excluded.last_seq)"""
    # An hour's span of first seqs only ever grows: a wider span is read, never a wrong one.
    return ";\n".join((totals, waits, buckets) if sign > 0 else (totals, waits))


def _as_last(name: str, timing: str, row: str) -> str:
    """The trigger for a record written (`NEW`) or deleted (`OLD`) as the last of its request: the fold
    of its earlier records moved on by it, or back."""
    return f"""
CREATE TRIGGER IF NOT EXISTS {name} {timing} ON audit
WHEN {_not_among(f"{row}.event", NOTICES)} AND NOT EXISTS ({_later(row)})
BEGIN
{_last(row, 1 if row == "NEW" else -1)};
END"""


def _later(row: str) -> str:
    return (
        f"SELECT 1 FROM audit WHERE request_id = {row}.request_id AND seq > {row}.seq "
        f"AND {_not_among('event', NOTICES)}"
    )


def _refold(name: str, timing: str, row: str) -> str:
    """The trigger for a record written before another of its request (`NEW`: a copied or repaired
    trail; hitl appends) or deleted before another (`OLD`): the request's fold without the record and with
    it. A delete runs before the delete, so both are plain index reads of the request's records, as when
    one is written."""
    with_row = (
        f"SELECT {_COLUMNS} FROM audit WHERE request_id = {row}.request_id AND {_not_among('event', NOTICES)}"
    )
    without_row = f"{with_row} AND seq <> {row}.seq"
    before, after = (without_row, with_row) if row == "NEW" else (with_row, without_row)
    records = f"""
SELECT * FROM ({_record_totals(before, -1, _first_bucket(before))})
UNION ALL
SELECT * FROM ({_record_totals(after, 1, _first_bucket(after))})"""
    body = ";\n".join(_apply(before, after, records))
    return f"""
CREATE TRIGGER IF NOT EXISTS {name} {timing} ON audit
WHEN {_not_among(f"{row}.event", NOTICES)} AND EXISTS ({_later(row)})
BEGIN
{body};
END"""


_TRIGGERS = (
    ("report_fold", "AFTER INSERT", "NEW", _as_last),
    ("report_refold", "AFTER INSERT", "NEW", _refold),
    ("report_unfold_last", "BEFORE DELETE", "OLD", _as_last),
    ("report_unfold", "BEFORE DELETE", "OLD", _refold),
)
TRIGGERS = tuple(build(name, timing, row) for name, timing, row, build in _TRIGGERS)
TRIGGER_NAMES = tuple(name for name, *_ in _TRIGGERS)

# The trail is the truth: whatever totals a store holds are replaced by the fold of its whole trail.
_BACKFILL = (
    "DELETE FROM report_totals",
    "DELETE FROM report_waits",
    "DELETE FROM report_buckets",
    f"""
INSERT INTO report_totals (kind, bucket, a, b, n)
{per_request("sqlite", windowed=False)},
b AS MATERIALIZED (SELECT request_id, {_bucket("first_at")} AS bucket FROM r)
SELECT 'o', bucket, tool, status, count(*) FROM r JOIN b USING (request_id) GROUP BY bucket, tool, status
UNION ALL
SELECT 'v', bucket, verdict, '', count(*) FROM r JOIN b USING (request_id) WHERE verdict IS NOT NULL
    GROUP BY bucket, verdict
UNION ALL
SELECT 'x', bucket, '', '', count(*) FROM r JOIN b USING (request_id) WHERE expired = 1 GROUP BY bucket
UNION ALL
SELECT 'y', bucket, '', '', count(*) FROM r JOIN b USING (request_id) WHERE escalated = 1 GROUP BY bucket
UNION ALL
SELECT 'e', bucket, event, '', count(*) FROM audit JOIN b USING (request_id)
    WHERE event NOT IN {_NOTICES} GROUP BY bucket, event
UNION ALL
SELECT 'a', bucket, actor, event, count(*) FROM audit JOIN b USING (request_id)
    WHERE event IN {_DECISIONS} AND {json_truthy("sqlite", "details", "confirmation")} = 0
    GROUP BY bucket, actor, event
""",
    f"""
INSERT INTO report_waits (wait, bucket, n)
{per_request("sqlite", windowed=False)}
SELECT wait, {_bucket("first_at")}, count(*) FROM r WHERE wait IS NOT NULL GROUP BY 1, 2
""",
    f"""
INSERT INTO report_buckets (bucket, first_seq, last_seq)
{per_request("sqlite", windowed=False)}
SELECT {_bucket("first_at")}, min(first_seq), max(first_seq) FROM r GROUP BY 1
""",
)


def install(conn: sqlite3.Connection, *, backfill: bool) -> None:
    """(Re)create the triggers (the tables are in SCHEMA); with `backfill`, fill the tables from the trail
    already there. Runs in the transaction that creates or upgrades the store: every upgrade writes the
    triggers of this version's fold (`report.STATUS_AFTER`, `NOTICES`, `DECISIONS`) and refolds the trail,
    so a change to the fold ships with a schema version."""
    for name in TRIGGER_NAMES:
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


def prune(conn: sqlite3.Connection) -> None:
    """Drop the totals that came to zero (an archive subtracts whole hours of them)."""
    conn.execute("DELETE FROM report_totals WHERE n = 0")
    conn.execute("DELETE FROM report_waits WHERE n = 0")


def read(conn: sqlite3.Connection, since: float | None) -> ReportRows:
    """The report's figures from the running totals, in the read transaction `conn` is in: sums over a few
    rows an hour, a walk of the waits in order, and for a window, a fold of its first hour's requests."""
    hours, params = "", {"since": since}
    sums: dict[str, Counter[tuple[str, str]]] = {kind: Counter() for kind in "ovxyae"}
    extra: list[float] = []
    if since is not None:
        (start,) = conn.execute(f"SELECT {_bucket(':since')}", params).fetchone()
        hours, params = " AND bucket > :start", {"since": since, "start": start}
        for kind, a, b, n, wait in _fold_hour(conn, since, start):
            if kind == "w":
                extra.append(wait)
            else:
                sums[kind][(a, b)] += n
    for kind, a, b, n in conn.execute(
        f"SELECT kind, a, b, sum(n) FROM report_totals WHERE n <> 0{hours} GROUP BY kind, a, b", params
    ):
        sums[kind][(a, b)] += n

    rows: list[tuple[Any, ...]] = [
        ("o", tool, status, n, None) for (tool, status), n in sums["o"].items() if n
    ]
    verdicts = sums["v"]
    rows += [("v", v, None, verdicts[(v, "")], None) for v in ("approved", "rejected")]
    rows += [("x", None, None, sums["x"][("", "")], None), ("y", None, None, sums["y"][("", "")], None)]
    waits = conn.execute(
        f"SELECT wait, n FROM report_waits WHERE n <> 0{hours} ORDER BY wait", params
    ).fetchall()
    extra.sort()
    timed = sum(n for _, n in waits) + len(extra)
    rows.append(("z", None, None, timed, None))
    if timed:
        rows += [("p", None, None, rank, wait) for rank, wait in _ranked(waits, extra, timed)]
    rows += [("a", actor, event, n, None) for (actor, event), n in sums["a"].items() if n]
    notices_window = "" if since is None else " AND at >= :since"
    rows += [
        ("e", event, None, n, None)
        for event, n in conn.execute(
            f"SELECT event, count(*) FROM audit WHERE event IN {_NOTICES}{notices_window} GROUP BY event",
            params,
        )
    ]
    rows += [("e", event, None, n, None) for (event, _), n in sums["e"].items() if n]
    return rows_of(rows)


def _ranked(waits: list[tuple[float, int]], extra: list[float], timed: int) -> Iterator[tuple[int, float]]:
    """The nearest-rank percentiles' (rank, wait) over the counted waits merged with `extra`."""
    wanted = sorted({nearest_rank(p, timed) for p in PERCENTILES})
    seen = 0
    merged: Iterable[tuple[float, int]] = heapq.merge(waits, ((wait, 1) for wait in extra))
    for wait, n in merged:
        seen += n
        while wanted and wanted[0] <= seen:
            yield wanted.pop(0), wait
        if not wanted:
            return


# The requests first recorded in since's hour at or after since: their first records lie between the
# hour's first and last first seq (report_buckets).
_IN_FIRST_HOUR = f"""request_id IN (
    SELECT h.request_id FROM audit AS h
    WHERE h.seq BETWEEN :first AND :last AND h.event NOT IN {_NOTICES} AND h.at >= :since
        AND {_bucket("h.at")} = :start
        AND NOT EXISTS (SELECT 1 FROM audit AS e WHERE e.request_id = h.request_id AND e.seq < h.seq
            AND {_not_among("e.event", NOTICES)})
)"""

# The same rows as the totals (kind, a, b, n) and each wait ('w', …, wait), for those requests alone.
_FIRST_HOUR = f"""
{per_request("sqlite", windowed=False, within=_IN_FIRST_HOUR)}
SELECT 'o', tool, status, count(*), NULL FROM r GROUP BY tool, status
UNION ALL
SELECT 'v', verdict, '', count(*), NULL FROM r WHERE verdict IS NOT NULL GROUP BY verdict
UNION ALL
SELECT 'x', '', '', count(*), NULL FROM r WHERE expired = 1
UNION ALL
SELECT 'y', '', '', count(*), NULL FROM r WHERE escalated = 1
UNION ALL
SELECT 'w', '', '', 1, wait FROM r WHERE wait IS NOT NULL
UNION ALL
SELECT 'e', event, '', count(*), NULL FROM audit
    WHERE event NOT IN {_NOTICES} AND request_id IN (SELECT request_id FROM r) GROUP BY event
UNION ALL
SELECT 'a', actor, event, count(*), NULL FROM audit
    WHERE event IN {_DECISIONS} AND {json_truthy("sqlite", "details", "confirmation")} = 0
        AND request_id IN (SELECT request_id FROM r)
    GROUP BY actor, event
"""


def _fold_hour(conn: sqlite3.Connection, since: float, start: int) -> list[tuple[Any, ...]]:
    """The fold of the requests first recorded in since's hour, at or after since, from the trail."""
    span = conn.execute(
        "SELECT first_seq, last_seq FROM report_buckets WHERE bucket = ?", (start,)
    ).fetchone()
    if span is None:
        return []
    bounds = {"first": span[0], "last": span[1], "since": since, "start": start}
    return conn.execute(_FIRST_HOUR, bounds).fetchall()

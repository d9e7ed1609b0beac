"""The report's aggregates as one SQL statement per backend.

`hitl_mcp.report` defines the figures as one pass over the audit trail in seq order. `per_request` computes
that fold inside the store: one GROUP BY over the trail finds, per request, its first record (tool, filing
time, whether it falls in the window), its last status-moving record (its status now), its first decision
(time to decision) and its flags. The figures are then counted over that per-request table. PostgreSQL
runs it at read time; SQLite keeps the same per-request table up to date with triggers as records are
written (sqlite_report.py), because it cannot scan a long trail that fast, and fills it with `per_request`
once when a store is upgraded. Only aggregates leave the database either way.

The rows come back tagged by their first column:
  o tool, status, count           requests per tool and status
  v verdict, count                requests a person approved or rejected
  x expired, escalated, timed     requests with those flags, requests with a time to decision
  p rank, seconds                 the nearest-rank percentiles' values (rank as in `report.percentile`)
  a actor, event, count           approvers' decisions
  e event, count                  every event in the window
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from hitl_mcp.report import DECISIONS, NOTICES, STATUS_AFTER, UNKNOWN_TOOL

Dialect = Literal["sqlite", "postgres"]
PERCENTILES = (50, 95)


@dataclass(frozen=True)
class ReportRows:
    """The report's aggregates as the store counted them."""

    outcomes: list[tuple[str, str, int]]
    approved: int
    rejected: int
    expired: int
    escalated: int
    timed: int
    percentiles: dict[int, float | None]
    approvers: list[tuple[str, str, int]]
    events: list[tuple[str, int]]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in(values: Iterable[str]) -> str:
    return "(" + ", ".join(_quote(value) for value in values) + ")"


class _Json:
    """How each backend reads one key of a record's `details`, as Python's `dict.get` would see it."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def text(self, column: str, key: str) -> str:
        """The key's value when it is a non-empty string, else NULL (a mangled `details` counts as none)."""
        if self.dialect == "sqlite":
            path = _quote(f"$.{key}")
            return (
                f"(CASE WHEN json_valid({column}) AND json_type({column}, {path}) = 'text' "
                f"AND json_extract({column}, {path}) <> '' THEN json_extract({column}, {path}) END)"
            )
        value = f"({column} -> {_quote(key)})"
        return (
            f"(CASE WHEN json_typeof({value}) = 'string' AND ({column} ->> {_quote(key)}) <> '' "
            f"THEN {column} ->> {_quote(key)} END)"
        )

    def truthy(self, column: str, key: str) -> str:
        """1 when the key's value is true as Python's `bool` sees it, else 0."""
        if self.dialect == "sqlite":
            path = _quote(f"$.{key}")
            kind, value = f"json_type({column}, {path})", f"json_extract({column}, {path})"
            return (
                f"(CASE WHEN NOT json_valid({column}) THEN 0 WHEN {kind} = 'true' THEN 1 "
                f"WHEN {kind} IN ('integer', 'real') THEN {value} <> 0 "
                f"WHEN {kind} = 'text' THEN {value} <> '' "
                f"WHEN {kind} = 'array' THEN json_array_length({column}, {path}) > 0 "
                f"WHEN {kind} = 'object' THEN {value} <> '{{}}' ELSE 0 END)"
            )
        value, text = f"({column} -> {_quote(key)})", f"({column} ->> {_quote(key)})"
        return (
            f"(CASE json_typeof({value}) WHEN 'boolean' THEN CASE WHEN {text}::boolean THEN 1 ELSE 0 END "
            f"WHEN 'number' THEN CASE WHEN {text}::numeric <> 0 THEN 1 ELSE 0 END "
            f"WHEN 'string' THEN CASE WHEN {text} <> '' THEN 1 ELSE 0 END "
            f"WHEN 'array' THEN CASE WHEN json_array_length({value}) > 0 THEN 1 ELSE 0 END "
            f"WHEN 'object' THEN CASE WHEN EXISTS (SELECT 1 FROM json_object_keys({value})) "
            "THEN 1 ELSE 0 END "
            "ELSE 0 END)"
        )


def _rank(dialect: Dialect, p: int) -> str:
    """`report.percentile`'s rank, max(1, ceil(p / 100 * n)), in the same double arithmetic."""
    product = f"({float(p)} / 100 * n)"
    if dialect == "sqlite":
        return f"max(1, CAST({product} AS INTEGER) + ({product} > CAST({product} AS INTEGER)))"
    return f"greatest(1, ceil({product})::bigint)"


def json_text(dialect: Dialect, column: str, key: str) -> str:
    return _Json(dialect).text(column, key)


def json_truthy(dialect: Dialect, column: str, key: str) -> str:
    return _Json(dialect).truthy(column, key)


def quote(value: str) -> str:
    return _quote(value)


def quoted_list(values: Iterable[str]) -> str:
    return _in(values)


def per_request(dialect: Dialect, windowed: bool, within: str = "1 = 1") -> str:
    """`WITH per AS (…), r AS (…)`: the fold of `report.build` per request, computed from the whole trail
    (`r`: request_id, first_seq, tool, first_at, filed_at, status, verdict, decided, wait, expired,
    escalated), for the requests whose first record is at or after the window's start when `windowed`,
    among the records `within` selects (a condition on `audit`'s columns)."""
    json_ = _Json(dialect)
    since = ":since" if dialect == "sqlite" else "$1"
    moving = sorted({*STATUS_AFTER, *DECISIONS})
    mapped = " ".join(f"WHEN {_quote(event)} THEN {_quote(status)}" for event, status in STATUS_AFTER.items())
    approved_status = f"COALESCE({json_.text('details', 'status')}, 'approved')"
    flag = "CASE WHEN event = {} THEN 1 ELSE 0 END"
    return f"""
WITH per AS MATERIALIZED (
    SELECT request_id,
        min(seq) AS first_seq,
        max(CASE WHEN event IN {_in(moving)} THEN seq END) AS move_seq,
        min(CASE WHEN event IN {_in(DECISIONS)} THEN seq END) AS decision_seq,
        max({flag.format("'rejected'")}) AS rejected,
        max(CASE WHEN event = 'approved' AND {approved_status} <> 'pending' THEN 1 ELSE 0 END) AS approved,
        max({flag.format("'expired'")}) AS expired,
        max({flag.format("'escalated'")}) AS escalated
    FROM audit WHERE event NOT IN {_in(sorted(NOTICES))} AND {within}
    GROUP BY request_id
),
r AS MATERIALIZED (
    SELECT per.request_id, per.first_seq,
        COALESCE({json_.text("f.details", "tool")}, {_quote(UNKNOWN_TOOL)}) AS tool,
        f.at AS first_at,
        CASE WHEN f.event = 'filed' THEN f.at END AS filed_at,
        CASE WHEN m.seq IS NULL THEN 'pending'
            WHEN m.event = 'approved' THEN {approved_status.replace("details", "m.details")}
            ELSE CASE m.event {mapped} END END AS status,
        CASE WHEN per.rejected = 1 THEN 'rejected' WHEN per.approved = 1 THEN 'approved' END AS verdict,
        CASE WHEN per.decision_seq IS NULL THEN 0 ELSE 1 END AS decided,
        CASE WHEN f.event = 'filed' THEN d.at - f.at END AS wait,
        per.expired, per.escalated
    FROM per
    JOIN audit f ON f.seq = per.first_seq
    LEFT JOIN audit m ON m.seq = per.move_seq
    LEFT JOIN audit d ON d.seq = per.decision_seq
    {f"WHERE f.at >= {since}" if windowed else ""}
)"""


def _figures(dialect: Dialect) -> str:
    """The tagged rows counted over a per-request table `r` (tool, status, verdict, wait, flags)."""
    ranks = ", ".join(_rank(dialect, p) for p in PERCENTILES)
    return f"""
SELECT 'o', tool, status, count(*), CAST(NULL AS double precision) FROM r GROUP BY tool, status
UNION ALL
SELECT 'v', verdict, NULL, count(*), NULL FROM r WHERE verdict IS NOT NULL GROUP BY verdict
UNION ALL
SELECT 'x', NULL, NULL, COALESCE(sum(expired), 0), NULL FROM r
UNION ALL
SELECT 'y', NULL, NULL, COALESCE(sum(escalated), 0), NULL FROM r
UNION ALL
SELECT 'z', NULL, NULL, count(wait), NULL FROM r
UNION ALL
SELECT 'p', NULL, NULL, rn, wait FROM (
    SELECT wait, n, row_number() OVER (ORDER BY wait) AS rn FROM (
        SELECT wait, count(*) OVER () AS n FROM r WHERE wait IS NOT NULL
    ) AS timed
) AS ranked WHERE rn IN ({ranks})"""


@cache
def statement(windowed: bool) -> str:
    """PostgreSQL's report statement: the trail folded per request at read time, with hash aggregates;
    when `windowed`, it takes the window's start as `$1`. (SQLite reads its running totals instead:
    sqlite_report.read.)"""
    dialect: Dialect = "postgres"
    notices = _in(sorted(NOTICES))
    # Without a window every request counts: the in-window test is dropped rather than run on every row.
    in_window = "request_id IN (SELECT request_id FROM r)" if windowed else "1 = 1"
    confirmed = _Json(dialect).truthy("details", "confirmation")
    return f"""{per_request(dialect, windowed)}
{_figures(dialect)}
UNION ALL
SELECT 'a', actor, event, count(*), NULL FROM audit
    WHERE event IN {_in(DECISIONS)} AND {confirmed} = 0 AND {in_window}
    GROUP BY actor, event
UNION ALL
SELECT 'e', event, NULL, count(*), NULL FROM audit
    WHERE CASE WHEN event IN {notices} THEN {"at >= $1" if windowed else "1 = 1"} ELSE {in_window} END
    GROUP BY event
"""


def rows_of(rows: Iterable[tuple[Any, ...]]) -> ReportRows:
    """The statement's tagged rows as `ReportRows`."""
    outcomes: list[tuple[str, str, int]] = []
    verdicts: dict[str, int] = {}
    totals: dict[str, int] = {}
    by_rank: dict[int, float] = {}
    approvers: list[tuple[str, str, int]] = []
    events: list[tuple[str, int]] = []
    for tag, first, second, count, seconds in rows:
        if tag == "o":
            outcomes.append((str(first), str(second), int(count)))
        elif tag == "v":
            verdicts[str(first)] = int(count)
        elif tag in ("x", "y", "z"):
            totals[tag] = int(count)
        elif tag == "p":
            by_rank[int(count)] = float(seconds)
        elif tag == "a":
            approvers.append((str(first), str(second), int(count)))
        else:
            events.append((str(first), int(count)))
    timed = totals.get("z", 0)
    return ReportRows(
        outcomes=outcomes,
        approved=verdicts.get("approved", 0),
        rejected=verdicts.get("rejected", 0),
        expired=totals.get("x", 0),
        escalated=totals.get("y", 0),
        timed=timed,
        percentiles={p: by_rank.get(nearest_rank(p, timed)) if timed else None for p in PERCENTILES},
        approvers=approvers,
        events=events,
    )


def nearest_rank(p: int, count: int) -> int:
    """The rank `report.percentile` takes; the statement picks the same ranks in SQL."""
    return max(1, math.ceil(p / 100 * count))

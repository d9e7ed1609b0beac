"""The filed calls as `hitl policy simulate` replays them: what each request was called with, what its
preview showed, and the rule it met — read a page at a time, in filing order, and never written."""

from __future__ import annotations

from dataclasses import dataclass

REPLAY_PAGE = 2000


@dataclass(frozen=True)
class Filed:
    """One filed request as stored: `arguments`, `preview` and `policy` are the JSON texts of its row."""

    seq: int
    request_id: str
    tool: str
    requested_by: str
    summary: str
    arguments: str
    preview: str
    policy: str


def sql(dialect: str, windowed: bool) -> str:
    """Requests after a seq (keyset), oldest first; with `windowed`, filed at or after a time. SQLite takes
    `?` parameters (after, [since,] limit), PostgreSQL `$n` in the same order."""
    json_columns = (
        "arguments, preview, policy"
        if dialect == "sqlite"
        else "arguments::text, preview::text, policy::text"
    )
    marks = iter(("?", "?", "?") if dialect == "sqlite" else ("$1", "$2", "$3"))
    where = f"seq > {next(marks)}"
    if windowed:
        where += f" AND created_at >= {next(marks)}"
    return (
        f"SELECT seq, id, tool, requested_by, summary, {json_columns} FROM requests WHERE {where} "
        f"ORDER BY seq LIMIT {next(marks)}"
    )

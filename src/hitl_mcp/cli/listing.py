"""`hitl list`'s pages: requests and calls denied at filing, read a store page at a time and printed as
they arrive, so a listing of any length never sits in memory.

A cursor says where a page ended: digits continue the requests, `d` and digits the denied calls (which
`--all` lists after the requests, and `--status denied` alone)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click

from hitl_mcp import display
from hitl_mcp.cli.calls import Calls
from hitl_mcp.cli.common import duration, time_left
from hitl_mcp.gate import MAX_PAGE
from hitl_mcp.models import Request, Status, utc
from hitl_mcp.store import Denial

DENIED = "denied"
CURSOR = re.compile(r"(d?)([0-9]{1,18})")
NOT_PLAIN = re.compile(r"[^\x20-\x7e]")
HEADER = ("ID", "AGE", "TOOL", "STATUS", "SUMMARY", "REQUESTED BY", "WAITS ON", "EXPIRES IN")
SUMMARY_WIDTH = 60
# When rows follow the first store page, columns are at least this wide: later rows are cut to the widths
# the first page set, and these fit the usual tool names, statuses and principals whole.
STREAMED_FLOORS = (10, 4, 20, 19, 60, 12, 28, 10)


@dataclass(frozen=True)
class Listing:
    """What one `hitl list` lists: request statuses (None: all; omitted when `requests` is False), and
    whether the calls denied at filing follow."""

    requests: bool
    statuses: tuple[Status, ...] | None
    denials: bool
    needs_a_person: bool = False

    @classmethod
    def of(cls, status: str | None, all_statuses: bool) -> Listing:
        if all_statuses:
            return cls(requests=True, statuses=None, denials=True)
        if status == DENIED:
            return cls(requests=False, statuses=None, denials=True)
        if status is not None:
            return cls(requests=True, statuses=(Status(status),), denials=False)
        # What needs a person: pending requests, and executing ones whose outcome is unknown.
        return cls(
            requests=True, statuses=(Status.PENDING, Status.EXECUTING), denials=False, needs_a_person=True
        )

    def start(self, cursor: str | None) -> tuple[bool, str | None]:
        """Whether listing starts among the denied calls, and the store cursor there."""
        if cursor is None:
            return not self.requests, None
        found = CURSOR.fullmatch(cursor)
        if found is None or (found[1] == "d" and not self.denials) or (found[1] == "" and not self.requests):
            raise click.BadParameter("not a cursor this listing printed", param_hint="--cursor")
        return found[1] == "d", found[2]


@dataclass(frozen=True)
class Chunk:
    """What one store page gave: the items to print, and the listing's cursor after them (None: the end)."""

    items: list[Any]
    cursor: str | None


async def chunks(
    gate: Calls, listing: Listing, tool: str | None, cursor: str | None, limit: int | None, *, records: bool
) -> AsyncIterator[Chunk]:
    """The listing from `cursor`, a store page at a time, `limit` items in all (None: to the end).

    `records`: whole records (for --json) rather than the summary lines a table needs."""
    in_denials, at = listing.start(cursor)
    left = limit
    while left is None or left > 0:
        size = MAX_PAGE if left is None else min(MAX_PAGE, left)
        if in_denials:
            page = await gate.denials(tool=tool, limit=size, cursor=at)
            items: list[Any] = list(page.denials)
            at, after = page.next_cursor, page.next_cursor and f"d{page.next_cursor}"
        else:
            items, at = await _requests(gate, listing, tool, size, at, records=records)
            after = at
            if at is None and listing.denials:
                in_denials, after = True, "d0"
        if left is not None:
            # Rows a filter dropped do not count: the page is the rows printed, and each store page is
            # read whole, so the cursor after it is exact.
            left -= len(items)
        yield Chunk(items, after)
        if after is None:
            return
        in_denials = after.startswith("d")


async def _requests(
    gate: Calls, listing: Listing, tool: str | None, size: int, cursor: str | None, *, records: bool
) -> tuple[list[Any], str | None]:
    if records:
        page = await gate.list(statuses=listing.statuses, tool=tool, limit=size, cursor=cursor)
        found: list[Any] = [r for r in page.requests if not listing.needs_a_person or _needs_a_person(r)]
        return found, page.next_cursor
    rows = await gate.summaries(statuses=listing.statuses, tool=tool, limit=size, cursor=cursor)
    lines: list[Any] = []
    for line in rows.lines:
        if line["status"] == Status.EXECUTING:
            # Whether its claimant can still finish it takes the whole record; executing ones are few.
            request = await gate.get(line["request_id"])
            if listing.needs_a_person and not request.outcome_unknown:
                continue
            line = {**line, "outcome_unknown": request.outcome_unknown}
        lines.append(line)
    return lines, rows.next_cursor


def _needs_a_person(request: Request) -> bool:
    return request.status is Status.PENDING or request.outcome_unknown


async def remaining(gate: Calls, listing: Listing, tool: str | None, cursor: str) -> int:
    """How many items the listing has after `cursor`."""
    in_denials, at = listing.start(cursor)
    if in_denials:
        return await gate.count_denials(tool=tool, cursor=at)
    more = await gate.count(statuses=listing.statuses, tool=tool, cursor=at)
    if listing.denials:
        more += await gate.count_denials(tool=tool, cursor=None)
    return more


# -- rendering -----------------------------------------------------------------------------------------


def row(item: dict[str, Any] | Denial, now: float) -> tuple[str, ...]:
    """A table row for a summary line (a request) or a denied call."""
    if isinstance(item, Denial):
        age = duration(now - item.at)
        return (
            item.request_id[:10],
            age,
            item.tool,
            DENIED,
            _cut(item.policy, SUMMARY_WIDTH),
            item.requested_by,
            "-",
            "-",
        )
    status = Status(item["status"])
    if item.get("outcome_unknown"):
        label = f"{status.value} (outcome unknown)"
    else:
        label = f"{status.value} (escalated)" if item["escalated"] else status.value
    left = datetime.fromisoformat(item["expires_at"]).timestamp() - now
    expires = "-" if status.is_final else (time_left(left) if left > 0 else "overdue")
    return (
        item["request_id"][:10],
        duration(now - datetime.fromisoformat(item["created_at"]).timestamp()),
        item["tool"],
        label,
        _cut(item["summary"], SUMMARY_WIDTH),
        item["requested_by"],
        item["waits_on"] if status is Status.PENDING and item["waits_on"] else "-",
        expires,
    )


def record(item: Request | Denial) -> str:
    """The JSON of a request's record, or of a denied call (no request: what its audit record holds)."""
    if isinstance(item, Request):
        return item.model_dump_json(indent=2)
    return json.dumps(denial(item), indent=2)


def denial(item: Denial) -> dict[str, Any]:
    return {
        "request_id": item.request_id,
        "tool": item.tool,
        "status": DENIED,
        "requested_by": item.requested_by,
        "created_at": utc(item.at).isoformat().replace("+00:00", "Z"),
        "policy": item.policy,
        "arguments_digest": item.arguments_digest,
    }


def _cut(text: str, columns: int, pad: bool = False) -> str:
    """`display.cut` (then padded to `columns` with `pad`), without its walk unit by unit for the many
    cells that already fit: a listing of 100,000 rows spent most of its time there."""
    shown = display.visible(text)
    width = _width(shown)
    if width > columns:
        shown = display.cut(text, columns)
        width = _width(shown)
    return shown + " " * (columns - width) if pad else shown


def _width(shown: str) -> int:
    """`display.width`, looking one by one only at the characters that are not printable ASCII."""
    odd = NOT_PLAIN.findall(shown)
    return len(shown) - len(odd) + sum(display.char_width(char) for char in odd)


class TablePrinter:
    """Prints rows as they come under one header: columns as wide as the first rows need (wider, up to
    `STREAMED_FLOORS`, when more rows will follow), later cells cut with "…" to fit them."""

    def __init__(self) -> None:
        self.widths: list[int] | None = None
        self.printed = 0

    def print(self, rows: Sequence[tuple[str, ...]], *, more_follow: bool) -> None:
        if not rows:
            return
        if self.widths is None:
            grid = [[display.visible(cell) for cell in line] for line in (HEADER, *rows)]
            self.widths = [max(_width(line[i]) for line in grid) for i in range(len(HEADER))]
            if more_follow:
                self.widths = [max(w, floor) for w, floor in zip(self.widths, STREAMED_FLOORS, strict=True)]
            click.echo(self._line(HEADER))
        click.echo("\n".join(self._line(line) for line in rows))
        self.printed += len(rows)

    def _line(self, cells: Sequence[str]) -> str:
        assert self.widths is not None
        padded = [_cut(cell, w, pad=True) for cell, w in zip(cells, self.widths, strict=True)]
        return display.COLUMN_GAP.join(padded).rstrip()


class JsonArrayPrinter:
    """A JSON array written element by element: valid JSON at the end, never held whole."""

    def __init__(self) -> None:
        self.printed = 0

    def print(self, items: Sequence[str]) -> None:
        for item in items:
            click.echo(("[\n" if self.printed == 0 else ",\n") + item, nl=False)
            self.printed += 1

    def close(self) -> None:
        click.echo("[]" if self.printed == 0 else "\n]")

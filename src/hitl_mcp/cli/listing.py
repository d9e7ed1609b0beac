"""`hitl list`'s pages: requests and calls denied at filing, read a store page at a time and printed as
they arrive, so a listing of any length never sits in memory.

What a listing lists, and its table, are `list_view`'s, shared with the quick path.

A cursor says where a page ended: digits continue the requests, `d` and digits the denied calls (which
`--all` lists after the requests, and `--status denied` alone)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import click

from hitl_mcp.cli import settings_stamp
from hitl_mcp.cli.calls import Calls
from hitl_mcp.cli.common import load, refusals, through_server, with_gate, with_server
from hitl_mcp.cli.list_view import (
    DENIED,
    SUMMARY_WIDTH,
    Listing,
    ListOptions,
    TablePrinter,
    cut,
    next_page,
    nothing,
    request_row,
)
from hitl_mcp.cli.units import duration
from hitl_mcp.gate import MAX_PAGE
from hitl_mcp.models import Request, Status, utc
from hitl_mcp.store import Denial, sqlite_schema


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
            cut(item.policy, SUMMARY_WIDTH),
            item.requested_by,
            "-",
            "-",
        )
    return request_row(item, now)


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


@refusals
def run(options: ListOptions) -> None:
    """`hitl list` read through the gate: on the configured store, or through the server HITL_SERVER
    names. A listing on an SQLite store leaves `settings_stamp` what the next one needs to skip this."""
    spec, limit = options.listing, options.limit

    async def show(gate: Calls) -> str | None:
        table, array = TablePrinter(), JsonArrayPrinter()
        now, after = time.time(), options.cursor
        upto = None if options.all_pages else limit
        async for chunk in chunks(gate, spec, options.tool, options.cursor, upto, records=options.as_json):
            after = chunk.cursor
            if options.as_json:
                array.print([record(item) for item in chunk.items])
            else:
                rows = [row(item, now) for item in chunk.items]
                more_follow = after is not None and (options.all_pages or table.printed + len(rows) < limit)
                table.print(rows, more_follow=more_follow)
        if options.as_json:
            array.close()
        elif table.printed == 0:
            click.echo(nothing(options))
        if after is None:
            return None
        more = await remaining(gate, spec, options.tool, after)
        return f"{more:,} more: {next_page(options, after)}" if more else None

    if through_server():
        more_line = with_server(show)
    else:
        # Taken before the settings are read: the stamp must vouch for what this load read, not for a
        # config changed meanwhile.
        digest = settings_stamp.fingerprint(os.environ)
        settings = load()
        more_line = with_gate(settings, show, readonly=True)
        if digest is not None and settings.store.url is None:
            settings_stamp.remember(
                digest,
                settings_stamp.Remembered(
                    db_path=str(settings.db_path),
                    busy_timeout=settings.gate.busy_timeout_seconds,
                    schema_version=sqlite_schema.SCHEMA_VERSION,
                    application_id=sqlite_schema.APPLICATION_ID,
                ),
            )
    if more_line is not None:
        click.echo(more_line, err=True)

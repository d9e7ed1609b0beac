"""What `hitl list` lists and how its table looks: the listing's statuses and cursors, a queue line as
a table row, and the table printed as rows arrive.

Stdlib and click only: the quick path (`hitl_mcp.cli.quick_list`) and the full one (`listing`) print
through this, so both print the same thing."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click

from hitl_mcp import display
from hitl_mcp.cli.units import duration, time_left
from hitl_mcp.status import Status

LIST_PAGE = 100
LIST_MAX = 10_000
DENIED = "denied"
CURSOR = re.compile(r"(d?)([0-9]{1,18})")
NOT_PLAIN = re.compile(r"[^\x20-\x7e]")
HEADER = ("ID", "AGE", "TOOL", "STATUS", "SUMMARY", "REQUESTED BY", "WAITS ON", "EXPIRES IN")
SUMMARY_WIDTH = 60
# When rows follow the first store page, columns are at least this wide: later rows are cut to the widths
# the first page set, and these fit the usual tool names, statuses and principals whole.
STREAMED_FLOORS = (10, 4, 20, 19, 60, 12, 28, 10)


@dataclass(frozen=True)
class ListOptions:
    """`hitl list`'s options as given."""

    status: str | None
    all_statuses: bool
    tool: str | None
    limit: int
    cursor: str | None
    all_pages: bool
    as_json: bool

    @property
    def listing(self) -> Listing:
        return Listing.of(self.status, self.all_statuses)


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


def request_row(item: dict[str, Any], now: float) -> tuple[str, ...]:
    """A table row for a summary line (a request)."""
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
        cut(item["summary"], SUMMARY_WIDTH),
        item["requested_by"],
        item["waits_on"] if status is Status.PENDING and item["waits_on"] else "-",
        expires,
    )


def nothing(options: ListOptions) -> str:
    """What an empty page says."""
    if options.cursor is not None:
        return "No more requests."
    return "No requests." if options.all_statuses or options.status else "Nothing is waiting for a decision."


def next_page(options: ListOptions, cursor: str) -> str:
    """The command that prints the page after `cursor`."""
    words = ["hitl", "list"]
    if options.status:
        words += ["--status", options.status]
    if options.all_statuses:
        words.append("--all")
    if options.tool:
        words += ["--tool", shlex.quote(options.tool)]
    if options.limit != LIST_PAGE:
        words += ["--limit", str(options.limit)]
    return " ".join([*words, "--cursor", cursor]) + " (or --all-pages for every page)"


def cut(text: str, columns: int, pad: bool = False) -> str:
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
        padded = [cut(cell, w, pad=True) for cell, w in zip(cells, self.widths, strict=True)]
        return display.COLUMN_GAP.join(padded).rstrip()

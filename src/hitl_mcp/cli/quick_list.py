"""`hitl list`'s quick path: one page of the queue, read from the SQLite store and printed without
loading the settings' models, the gate or the store's classes.

A listing is mostly start-up: the full path imports pydantic, the models and the store (about 0.3 s) to
print what one query reads. This path answers the common case, a page of a table on an SQLite store the
settings were last loaded for (`settings_stamp`), with the same page query, the same lines
(`hitl_mcp.queue_rows`) and the same table (`list_view`). Whatever it cannot answer exactly as the full
path would, it hands to the full path before printing anything: through a server, --json, --all-pages,
--all, --tool, denied calls, a page larger than one store page, settings changed since they were last
loaded, a store missing or of another schema, a row executing (whether its outcome is unknown takes the
gate), and any SQLite error (the full path says what it means).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hitl_mcp.cli import settings_stamp
from hitl_mcp.cli.list_view import DENIED, Listing, ListOptions, TablePrinter, next_page, nothing, request_row
from hitl_mcp.cli.where import through_server
from hitl_mcp.queue_rows import MAX_PAGE, count_after, open_reader, summary_page
from hitl_mcp.status import Status


@dataclass(frozen=True)
class Page:
    lines: list[dict[str, Any]]
    cursor: str | None
    more: int
    """How many requests follow the page (0 when it is the last)."""


def answer(options: ListOptions) -> bool:
    """Print the page as the full path would and say True, or print nothing and say False."""
    if options.as_json or options.all_pages or options.all_statuses or options.tool is not None:
        return False
    if options.status == DENIED or options.limit > MAX_PAGE or through_server():
        return False
    digest = settings_stamp.fingerprint(os.environ)
    known = None if digest is None else settings_stamp.recall(digest)
    if known is None:
        return False
    spec = options.listing
    _, at = spec.start(options.cursor)
    try:
        page = _read(known, spec, options.limit, at)
    except (sqlite3.Error, OSError):
        return False
    if page is None:
        return False
    now = time.time()
    if page.lines:
        TablePrinter().print([request_row(line, now) for line in page.lines], more_follow=False)
    else:
        click.echo(nothing(options))
    if page.cursor is not None and page.more:
        click.echo(f"{page.more:,} more: {next_page(options, page.cursor)}", err=True)
    return True


def _read(known: settings_stamp.Remembered, spec: Listing, limit: int, at: str | None) -> Page | None:
    path = Path(known.db_path)
    if not path.is_file():
        return None
    conn = open_reader(path, timeout=known.busy_timeout)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if (version, application_id) != (known.schema_version, known.application_id):
            return None
        # One snapshot for the page and the count after it.
        conn.execute("BEGIN")
        try:
            lines, after = summary_page(conn, spec.statuses, None, limit, at)
            if any(line["status"] == Status.EXECUTING for line in lines):
                return None
            more = 0 if after is None else count_after(conn, spec.statuses, None, after)
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()
    return Page(lines, after, more)

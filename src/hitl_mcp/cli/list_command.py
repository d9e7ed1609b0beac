"""`hitl list`: the command and its options, which answer from the quick path when it can
(`quick_list`) and from the full one (`listing.run`) otherwise.

Stdlib and click only, like everything the quick path imports: this module is loaded for every listing."""

from __future__ import annotations

import click

from hitl_mcp.cli import quick_list
from hitl_mcp.cli.app import main
from hitl_mcp.cli.list_view import DENIED, LIST_MAX, LIST_PAGE, ListOptions
from hitl_mcp.status import Status


@main.command("list")
@click.option(
    "--status",
    "status",
    type=click.Choice([s.value for s in Status] + [DENIED]),
    help="Only requests in this status (default: pending), or `denied`: calls the policy refused at filing.",
)
@click.option("--all", "all_statuses", is_flag=True, help="Requests in every status, then denied calls.")
@click.option("--tool", help="Only requests for this gated tool.")
@click.option(
    "--limit",
    default=LIST_PAGE,
    show_default=True,
    type=click.IntRange(1, LIST_MAX),
    help=f"Rows in this page (at most {LIST_MAX:,}).",
)
@click.option("--cursor", help="Continue where an earlier page ended, as its last line on stderr says.")
@click.option(
    "--all-pages", is_flag=True, help="Every page to the end, each printed as it is read (never held)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of full records.")
def list_requests(
    status: str | None,
    all_statuses: bool,
    tool: str | None,
    limit: int,
    cursor: str | None,
    all_pages: bool,
    as_json: bool,
) -> None:
    """List requests, oldest first: by default what needs a person — pending requests, and executing
    ones whose outcome is unknown — or those of one --status, or --all.

    A page has --limit rows; when more remain, the last line (on stderr) says how many and the command
    for the next page (`--cursor C`). --all-pages prints them all, a page at a time. Denied calls were
    never requests: each is the audit record of a call the policy refused, listed by --status denied and
    after the requests by --all, as `hitl report` counts them."""
    if status and all_statuses:
        raise click.UsageError("give --status or --all, not both")
    options = ListOptions(status, all_statuses, tool, limit, cursor, all_pages, as_json)
    options.listing.start(cursor)  # a bad cursor is refused before the store is opened
    if quick_list.answer(options):
        return
    # Imported here: the full path loads the settings, the gate and the store (pydantic and all).
    from hitl_mcp.cli import listing

    listing.run(options)

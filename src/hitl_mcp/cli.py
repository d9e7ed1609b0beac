"""The human face: `hitl`. Parses, establishes who is acting, calls the gate, renders the answer."""

from __future__ import annotations

import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import anyio
import click

from hitl_mcp.config import Settings, check_principal, load_settings
from hitl_mcp.errors import HitlError
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.models import Request, Status

T = TypeVar("T")

# Another process that claimed the request is running it; say how it ended rather than "executing".
OUTCOME_WAIT_SECONDS = 30.0
LIST_PAGE = 200


def _settings(principal: str | None = None) -> Settings:
    return load_settings(principal=principal)


def _with_gate(settings: Settings, work: Callable[[Gate], Awaitable[T]]) -> T:
    async def run() -> T:
        async with open_gate(settings) as gate:
            return await work(gate)

    return anyio.run(run)


def _refusals(command: Callable[..., None]) -> Callable[..., None]:
    """Every refusal ends the command with one line on stderr and the refusal's exit status."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except HitlError as error:
            click.echo(f"hitl: {error}", err=True)
            sys.exit(error.exit_code)

    return wrapper


def _acting_as(name: str | None) -> str:
    return check_principal(name or getpass.getuser(), "--as")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hitl-mcp")
def main() -> None:
    """hitl — a human between an AI agent and the actions it must not take alone.

    Agents file requests through the MCP server (`hitl serve`); you list, inspect, approve and reject
    them here. Both use the store named by HITL_DB (default: your user data directory) and the settings
    in the TOML file named by HITL_CONFIG.
    """


@main.command()
@click.option("--http", "use_http", is_flag=True, help="Speak streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind with --http.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port for --http."
)
@_refusals
def serve(use_http: bool, host: str, port: int) -> None:
    """Run the MCP server: stdio by default, or HTTP at http://HOST:PORT/mcp.

    The server acts as the principal named by HITL_PRINCIPAL (default: agent): requests it files are
    requested by that principal, and it can never approve them itself.
    """
    from hitl_mcp.server import build_server

    settings = _settings()
    app = build_server(settings)
    if use_http:
        click.echo(
            f"hitl-mcp: serving MCP at http://{host}:{port}/mcp as {settings.principal!r}, "
            f"store {settings.db_path}",
            err=True,
        )
        app.run(transport="streamable-http", host=host, port=port)
    else:
        app.run()


@main.command("list")
@click.option(
    "--status",
    "status",
    type=click.Choice([s.value for s in Status]),
    help="Only requests in this status (default: pending).",
)
@click.option("--all", "all_statuses", is_flag=True, help="Requests in every status.")
@click.option("--tool", help="Only requests for this gated tool.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of full records.")
@_refusals
def list_requests(
    status: str | None, all_statuses: bool, tool: str | None, limit: int, as_json: bool
) -> None:
    """List requests, oldest first (pending ones unless --status or --all)."""
    if status and all_statuses:
        raise click.UsageError("give --status or --all, not both")
    statuses = None if all_statuses else (Status(status) if status else Status.PENDING,)

    async def collect(gate: Gate) -> list[Request]:
        found: list[Request] = []
        cursor = None
        while len(found) < limit:
            page = await gate.list(statuses=statuses, tool=tool, limit=min(LIST_PAGE, limit), cursor=cursor)
            found.extend(page.requests)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return found[:limit]

    requests = _with_gate(_settings(), collect)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in requests], indent=2))
        return
    if not requests:
        click.echo("No requests." if all_statuses or status else "Nothing is waiting for a decision.")
        return
    now = time.time()
    rows = [
        (
            r.request_id[:10],
            _duration(now - r.created_at.timestamp()),
            r.tool,
            r.status.value,
            _truncate(r.summary, 60),
            r.requested_by,
            _expires_in(r, now),
        )
        for r in requests
    ]
    click.echo(_table(("ID", "AGE", "TOOL", "STATUS", "SUMMARY", "REQUESTED BY", "EXPIRES IN"), rows))


@main.command()
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@_refusals
def show(request_id: str, as_json: bool) -> None:
    """Everything about one request (ID may be any unique prefix)."""
    request = _with_gate(_settings(), lambda gate: gate.get(request_id))
    if as_json:
        click.echo(request.model_dump_json(indent=2))
    else:
        click.echo(_describe(request))


@main.command()
@click.argument("request_id")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--reason", help="Why you approve, kept in the audit trail.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the record afterwards as JSON.")
@_refusals
def approve(request_id: str, as_name: str | None, reason: str | None, yes: bool, as_json: bool) -> None:
    """Approve a pending request; its action runs at once, exactly once."""
    principal = _acting_as(as_name)
    settings = _settings(principal)

    async def decide(gate: Gate) -> Request:
        request = await gate.get(request_id)
        if not yes and sys.stdin.isatty():
            click.echo(_describe(request))
            if not click.confirm(f"Approve and run {request.tool} now as {principal}?", default=False):
                raise HitlError("not approved; nothing was changed")
        request = await gate.approve(request.request_id, principal, reason)
        if request.status is Status.EXECUTING:
            request = await gate.wait(request.request_id, OUTCOME_WAIT_SECONDS)
        return request

    request = _with_gate(settings, decide)
    _report(request, as_json)
    if request.status is Status.FAILED:
        sys.exit(6)


@main.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="Why, shown to the requester and kept in the audit trail.")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the record afterwards as JSON.")
@_refusals
def reject(request_id: str, reason: str, as_name: str | None, as_json: bool) -> None:
    """Reject a pending request; it will never run."""
    principal = _acting_as(as_name)
    request = _with_gate(_settings(principal), lambda gate: gate.reject(request_id, principal, reason))
    _report(request, as_json)


@main.command()
@click.argument("request_id")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@_refusals
def cancel(request_id: str, as_name: str | None) -> None:
    """Withdraw a pending request you filed yourself."""
    principal = _acting_as(as_name)
    request = _with_gate(_settings(principal), lambda gate: gate.cancel(request_id, principal))
    _report(request, False)


# -- rendering -----------------------------------------------------------------------------------


def _report(request: Request, as_json: bool) -> None:
    if as_json:
        click.echo(request.model_dump_json(indent=2))
        return
    click.echo(f"{request.request_id} {request.status.value}: {request.summary}")
    if request.result is not None:
        click.echo(f"result: {json.dumps(request.result, sort_keys=True)}")
    if request.error:
        click.echo(f"error: {request.error}")


def _describe(request: Request) -> str:
    lines = [
        f"Request    {request.request_id}",
        f"Tool       {request.tool}",
        f"Status     {request.status.value}",
        f"Summary    {request.summary}",
        f"Requested  by {request.requested_by} at {request.created_at.isoformat(timespec='seconds')}",
        f"Expires    {request.expires_at.isoformat(timespec='seconds')}",
        "Arguments  "
        + json.dumps(request.arguments, indent=2, sort_keys=True).replace("\n", "\n           "),
        "Preview    " + json.dumps(request.preview, indent=2, sort_keys=True).replace("\n", "\n           "),
    ]
    for decision in request.decisions:
        note = f" — note: {decision.reason!r}" if decision.reason else ""
        lines.append(
            f"Decision   {decision.verdict} by {decision.principal} "
            f"at {decision.decided_at.isoformat(timespec='seconds')}{note}"
        )
    if request.result is not None:
        lines.append("Result     " + json.dumps(request.result, sort_keys=True))
    if request.error:
        lines.append(f"Error      {request.error}")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _expires_in(request: Request, now: float) -> str:
    if request.status.is_final:
        return "-"
    left = request.expires_at.timestamp() - now
    return _duration(left) if left > 0 else "overdue"


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"

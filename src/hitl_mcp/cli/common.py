"""What every `hitl` command shares: settings, the gate, who is acting, refusals, and rendering.

Everything rendered here for a person goes through `hitl_mcp.display`: agents write summaries, arguments
and previews, and a control or bidi character printed raw could make the approver read something else.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import click

from hitl_mcp import display
from hitl_mcp.cli.calls import Calls

# Re-exported: the commands take them from here; `units` holds them for `hitl list`'s quick path.
from hitl_mcp.cli.units import duration as duration
from hitl_mcp.cli.units import time_left as time_left
from hitl_mcp.cli.where import through_server as through_server
from hitl_mcp.config import Settings, check_principal, load_settings
from hitl_mcp.errors import HitlError, InvalidArguments, NotAllowed
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.models import Request, RequestSummary, Status

if TYPE_CHECKING:
    from hitl_mcp.cli.remote import RemoteGate

T = TypeVar("T")


def load(principal: str | None = None) -> Settings:
    return load_settings(principal=principal)


def with_gate(settings: Settings, work: Callable[[Gate], Awaitable[T]], *, readonly: bool = False) -> T:
    """Run `work` on a gate over the configured store; `readonly` for commands that only read."""

    async def run() -> T:
        async with open_gate(settings, readonly=readonly) as gate:
            return await work(gate)

    return anyio.run(run)


def with_calls(
    principal: str | None,
    work: Callable[[Calls], Awaitable[T]],
    *,
    readonly: bool = False,
    deciding: bool = False,
) -> T:
    """Run `work` through the server HITL_SERVER names, as its token's principal, or else on a gate over
    the configured store as `principal`. `deciding`: the command approves, rejects, cancels, retries or
    settles, which `[cli] direct_decisions = false` keeps off a store opened directly."""
    if through_server():
        return with_server(work)
    settings = load(principal)
    if deciding and (refusal := deciding_refusal(settings)) is not None:
        raise NotAllowed(refusal)
    return with_gate(settings, work, readonly=readonly)


def deciding_refusal(settings: Settings) -> str | None:
    """Why a decision may not be made on this store opened directly, if it may not."""
    if settings.cli.direct_decisions:
        return None
    return (
        "decisions on this store go through a server ([cli] direct_decisions = false): set HITL_SERVER "
        "and HITL_TOKEN, or run `hitl login`; nothing was changed"
    )


def with_server(work: Callable[[RemoteGate], Awaitable[T]]) -> T:
    """Run `work` through the server HITL_SERVER names, as the principal of its token."""
    # Imported only here: httpx2 and the client cost the store's commands nothing.
    from hitl_mcp.cli import remote

    found = remote.from_environment()
    assert found is not None, "with_server without HITL_SERVER"
    server, token = found

    async def run() -> T:
        async with remote.connect(server, token) as gate:
            return await work(gate)

    return anyio.run(run)


def acting_for(gate: Calls, principal: str) -> str:
    """Who a call on `gate` acts as: through a server, its token's principal, whatever `principal` says."""
    return str(getattr(gate, "principal", principal))


def refusals(command: Callable[..., None]) -> Callable[..., None]:
    """Every refusal ends the command with one line on stderr and the refusal's exit status."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except HitlError as error:
            refuse(error)
        except BaseExceptionGroup as group:
            # A refusal raised inside a task group (a server's start, say) arrives wrapped in one.
            found = group.subgroup(HitlError)
            if found is None or len(found.exceptions) != 1 or not isinstance(found.exceptions[0], HitlError):
                raise
            refuse(found.exceptions[0])

    return wrapper


def refuse(error: HitlError) -> NoReturn:
    click.echo(f"hitl: {display.visible_lines(str(error))}", err=True)
    sys.exit(error.exit_code)


def acting_as(name: str | None) -> str:
    """Who a command acts as, in the normal form every comparison uses (`--as AGENT` is `agent`).

    Through a server the token is the identity: `--as` is refused, and the name returned is only the OS
    user's, which the server ignores."""
    if name and through_server():
        raise InvalidArguments(
            "--as: not through a server (HITL_SERVER): the token is who acts; unset HITL_SERVER to act "
            "on a store as someone else; nothing was done"
        )
    if through_server():
        return ""
    if name:
        return check_principal(name, "--as")
    return check_principal(getpass.getuser(), "your OS user name (act as someone with --as NAME)")


def report(request: Request, as_json: bool) -> None:
    if as_json:
        click.echo(request.model_dump_json(indent=2))
        return
    click.echo(f"{request.request_id} {status_label(request)}: {display.visible(request.summary)}")
    if request.status is Status.PENDING and request.approval.may_decide:
        click.echo(f"waits on: {display.visible(request.approval.may_decide)}")
    if request.recording is not None:
        click.echo(f"recording: {display.visible(request.recording)}")
    if request.result is not None:
        click.echo(f"result: {shown_json(request.result)}")
    if request.error:
        click.echo(f"error: {display.visible(request.error)}")
    if request.status is Status.FAILED:
        click.echo(f"effect: {effect_text(request, time.time())}")


def effect_text(request: Request, now: float) -> str:
    """What a failed request did to its target, and so what a person may do next."""
    short = request.request_id[:10]
    if request.effect != "none":
        # An older record without `effect` is read the safe way: nobody can say it had none.
        return (
            "unknown — it may have taken effect, and it is never run again by itself: check the target, "
            "and file a new request if it is still needed"
        )
    if request.expires_at.timestamp() <= now:
        return "none — it had no effect; it expired, so it cannot be retried: file a new request"
    return f"none — it had no effect, and may be retried with `hitl retry {short}` before it expires"


def shown_json(value: Any, indent: int | None = None) -> str:
    """JSON for a person: non-ASCII text readable as itself, yet every character that could change how
    the rest is shown escaped. json.dumps with ensure_ascii=False would leave U+202E or U+2028 raw; the
    escapes `display` writes (`\\u202e`) are also the JSON escapes, so the text still reads as JSON."""
    return display.visible_lines(json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False))


def indented(value: Any) -> str:
    return shown_json(value, indent=2).replace("\n", "\n           ")


def status_label(request: Request) -> str:
    if request.outcome_unknown:
        return f"{request.status.value} (outcome unknown)"
    if request.recording is not None:
        return f"{request.status.value} (recording the outcome)"
    return f"{request.status.value} (escalated)" if request.approval.escalated else request.status.value


def describe(request: Request) -> str:
    approval = request.approval
    lines = [
        f"Request    {request.request_id}",
        f"Tool       {request.tool}",
        f"Status     {status_label(request)}",
        f"Summary    {display.visible(request.summary)}",
        f"Requested  by {request.requested_by} at {request.created_at.isoformat(timespec='seconds')}",
        f"Expires    {request.expires_at.isoformat(timespec='seconds')}",
        f"Policy     {display.visible(approval.description)}",
    ]
    if approval.waiting_on is not None and request.status.value == "pending":
        of = len(approval.policy.levels)
        lines.append(f"Waits on   level {approval.waiting_on + 1} of {of}: {approval.may_decide}")
    lines.append("Arguments  " + indented(request.arguments))
    if request.original_arguments is not None:
        lines.append("As filed   " + indented(request.original_arguments))
    lines.append("Preview    " + indented(request.preview))
    if request.confirmation is not None:
        said = "yes" if request.confirmation == "confirmed" else "no"
        lines.append(
            f"Confirm    {request.confirmation}: {request.requested_by}'s person said {said} "
            "through their client"
        )
    for decision in request.decisions:
        note = f" — note: {decision.reason!r}" if decision.reason else ""
        lines.append(
            f"Decision   {decision.verdict} by {decision.principal} "
            f"at {decision.decided_at.isoformat(timespec='seconds')}{note}"
        )
        for name, change in (decision.changes or {}).items():
            lines.append(f"  edited   {name}: {change.before!r} → {change.after!r}")
    if request.claimed_by is not None:
        at = f" at {request.claimed_at.isoformat(timespec='seconds')}" if request.claimed_at else ""
        lines.append(f"Claimed    by {request.claimed_by}{at}")
    if request.recording is not None:
        lines.append(f"Outcome    {display.visible(request.recording)}")
    if request.outcome_unknown:
        lines.append("Outcome    unknown: its claimant is gone or overdue; it may or may not have run.")
        lines.append("           It never runs again by itself: check the target, then record what you found")
        lines.append(
            f"           with `hitl settle {request.request_id[:10]} --executed|--failed --note TEXT`."
        )
    if request.result is not None:
        lines.append("Result     " + shown_json(request.result))
    if request.error:
        lines.append(f"Error      {display.visible(request.error)}")
    if request.status is Status.FAILED:
        lines.append(f"Effect     {effect_text(request, time.time())}")
    # Each value above is escaped on its own, so none can start a line of its own; this pass is for the
    # names and texts that come from principals, decisions and the config.
    return "\n".join(display.visible_lines(line) for line in lines)


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Cells escaped and padded by display width, so a value never runs into the next column."""
    return display.table(header, rows)


def counted(n: int, noun: str) -> str:
    """`1 request`, `2 requests`, `31,245 audit records`: `noun` is the plural, ending in s."""
    return f"{n:,} {noun[:-1] if n == 1 else noun}"


def expires_in(request: Request | RequestSummary, now: float) -> str:
    if request.status.is_final:
        return "-"
    left = request.expires_at.timestamp() - now
    return time_left(left) if left > 0 else "overdue"


def truncate(text: str, width: int) -> str:
    """`text` escaped and cut to `width` display columns with "…", never inside an escape."""
    return display.cut(text, width)

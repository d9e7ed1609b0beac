"""Commands on requests: show, approve, reject, cancel (`hitl list` is `list_command`'s)."""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

import click

from hitl_mcp import json_input
from hitl_mcp.actions.base import describe_target
from hitl_mcp.cli.app import main
from hitl_mcp.cli.calls import Calls
from hitl_mcp.cli.common import (
    acting_as,
    acting_for,
    describe,
    duration,
    refusals,
    report,
    with_calls,
)
from hitl_mcp.errors import HitlError, InvalidArguments
from hitl_mcp.models import Request, Status

# Another process that claimed the request is running it; say how it ended rather than "executing".
OUTCOME_WAIT_SECONDS = 30.0
OUTCOME_GRACE_SECONDS = 2.0


@main.command()
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@refusals
def show(request_id: str, as_json: bool) -> None:
    """Everything about one request (ID may be any unique prefix)."""
    request = with_calls(None, lambda gate: gate.get(request_id), readonly=True)
    if as_json:
        click.echo(request.model_dump_json(indent=2))
    else:
        click.echo(describe(request))


@main.command()
@click.argument("request_id")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--reason", help="Why you approve, kept in the audit trail.")
@click.option(
    "--set",
    "edits",
    metavar="NAME=VALUE",
    multiple=True,
    help="Change an argument before approving (repeatable); VALUE is read as JSON when it parses, "
    "else as text. The edit is validated, re-previewed, re-checked by policy and audited.",
)
@click.option("--yes", "-y", is_flag=True, help="Approve without asking (needed when not on a terminal).")
@click.option(
    "--wait",
    "wait_seconds",
    default=OUTCOME_WAIT_SECONDS,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="How long to wait for the outcome when another process runs the action.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record afterwards as JSON.")
@refusals
def approve(
    request_id: str,
    as_name: str | None,
    reason: str | None,
    edits: tuple[str, ...],
    yes: bool,
    wait_seconds: float,
    as_json: bool,
) -> None:
    """Approve a pending request. Once its policy's approvals are complete, its action runs at once,
    exactly once; until then the request waits on the next level.

    The action runs only in a process configured for what the request was previewed against (its
    ledger, database, SMTP server): approved from anywhere else, a running `hitl serve` that has it runs
    it, and this command waits for the outcome (--wait) and prints it."""
    principal = acting_as(as_name)
    changes = parse_assignments(edits) if edits else None
    if not yes and not sys.stdin.isatty():
        # Without a terminal nobody can answer the question; never take silence for a yes.
        raise InvalidArguments(
            "not on a terminal, so nobody can confirm: pass --yes to approve; nothing was changed"
        )

    async def decide(gate: Calls) -> Request:
        request = await gate.get(request_id)
        if not yes:
            click.echo(describe(request))
            if changes:
                click.echo(f"Edits      {json.dumps(changes, sort_keys=True)}")
            if not click.confirm(f"Approve {request.tool} as {acting_for(gate, principal)}?", default=False):
                raise HitlError("not approved; nothing was changed")
        request = await gate.approve(request.request_id, principal, reason, changes)
        if request.status in (Status.APPROVED, Status.EXECUTING) and request.approval.waiting_on is None:
            request = await _outcome_from_elsewhere(gate, request, wait_seconds)
        return request

    request = with_calls(principal, decide, deciding=True)
    report(request, as_json)
    short = request.request_id[:10]
    if not as_json and request.status is Status.APPROVED and request.approval.waiting_on is None:
        click.echo(
            f"still approved after {duration(wait_seconds)}: no process configured for its target has run "
            f"it yet. A running `hitl serve` with that configuration runs it; `hitl show {short}` tells "
            "the outcome"
        )
    elif not as_json and request.status is Status.EXECUTING and not request.outcome_unknown:
        click.echo(f"still running in {request.claimed_by}; `hitl show {short}` tells the outcome")
    if request.status is Status.FAILED:
        sys.exit(6)


async def _outcome_from_elsewhere(gate: Calls, request: Request, wait_seconds: float) -> Request:
    """Wait for the outcome of an approved request another process runs, saying what happens: who runs it
    once that is known, a waiting line only while no outcome has come, and "not run here" only when no
    process configured for its target has taken it by the end."""
    # A running server claims at once, woken by the change: its outcome usually comes before a person
    # would read a waiting line, and then there is nothing to wait for.
    request = await gate.wait(request.request_id, min(OUTCOME_GRACE_SECONDS, wait_seconds))
    target = "its target" if request.target is None else describe_target(request.target)
    left = wait_seconds - OUTCOME_GRACE_SECONDS
    if request.status is Status.EXECUTING and not request.outcome_unknown and left > 0:
        click.echo(
            f"approved; running in {request.claimed_by}, a process configured for {target} — waiting up to "
            f"{duration(left)} for the outcome …",
            err=True,
        )
        request = await gate.wait(request.request_id, left)
    elif request.status is Status.APPROVED and left > 0:
        click.echo(
            f"approved; a process configured for {target} runs it (a running `hitl serve`) — waiting up to "
            f"{duration(left)} for the outcome …",
            err=True,
        )
        request = await gate.wait(request.request_id, left)
    elif request.claimed_by is not None and request.claimed_by != gate.worker:
        click.echo(f"approved; run by {request.claimed_by}, a process configured for {target}", err=True)
    if request.status is Status.APPROVED and (elsewhere := gate.elsewhere(request)) is not None:
        click.echo(f"not run here: {elsewhere}", err=True)
    return request


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, raw = assignment.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{assignment!r} is not NAME=VALUE", param_hint="--set")
        try:
            changes[name.strip()] = json_input.loads(raw)
        except json_input.TooDeep as error:
            raise InvalidArguments(f"--set {name.strip()}: {error}; nothing was done") from None
        except json.JSONDecodeError:
            changes[name.strip()] = raw
    return changes


@main.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="Why, shown to the requester and kept in the audit trail.")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the record afterwards as JSON.")
@refusals
def reject(request_id: str, reason: str, as_name: str | None, as_json: bool) -> None:
    """Reject a pending request; it will never run."""
    principal = acting_as(as_name)
    request = with_calls(principal, lambda gate: gate.reject(request_id, principal, reason), deciding=True)
    report(request, as_json)


@main.command()
@click.argument("request_id")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@refusals
def cancel(request_id: str, as_name: str | None) -> None:
    """Withdraw a pending request you filed yourself."""
    principal = acting_as(as_name)
    request = with_calls(principal, lambda gate: gate.cancel(request_id, principal), deciding=True)
    report(request, False)


@main.command()
@click.argument("request_id")
@click.option("--executed", "outcome", flag_value="executed", help="The action did take effect.")
@click.option("--failed", "outcome", flag_value="failed", help="The action did not take effect.")
@click.option("--note", required=True, help="What you checked and found; kept in the audit trail.")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the record afterwards as JSON.")
@refusals
def settle(request_id: str, outcome: str | None, note: str, as_name: str | None, as_json: bool) -> None:
    """Record the outcome of a request whose executor died while running it (`outcome unknown`).

    Nothing re-runs such a request: check the real system (the broker, the mailbox, the database), then
    say what happened. Refused for any request that is not of unknown outcome."""
    if outcome is None:
        raise click.UsageError("say what happened: --executed or --failed")
    principal = acting_as(as_name)
    settled_as: Literal["executed", "failed"] = "executed" if outcome == "executed" else "failed"
    request = with_calls(
        principal, lambda gate: gate.settle(request_id, principal, settled_as, note), deciding=True
    )
    report(request, as_json)


@main.command()
@click.argument("request_id")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the record afterwards as JSON.")
@refusals
def retry(request_id: str, as_name: str | None, as_json: bool) -> None:
    """Run again a failed request whose failure certainly had no effect (`effect: none`: the SMTP server
    refused the connection, the preview check at execution refused), with the same approved arguments.

    Only before it expires, and only by someone who may approve it. A failure whose effect is unknown is
    never retried: check the real system and file a new request instead."""
    principal = acting_as(as_name)
    request = with_calls(principal, lambda gate: gate.retry(request_id, principal), deciding=True)
    report(request, as_json)
    if request.status is Status.FAILED:
        sys.exit(6)

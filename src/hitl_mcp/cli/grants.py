"""`hitl grants`: standing approvals — make, list, approve a further level, revoke.

On a store the command acts as `--as` (or the OS user); through a server (HITL_SERVER) as its token's
principal, through `/api/v1/grants`. Either way the Gate judges it by the same rules, and `--json` prints
the same record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from hitl_mcp import grants
from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import acting_as, deciding_refusal, load, refusals, table, through_server, time_left
from hitl_mcp.errors import NotAllowed

if TYPE_CHECKING:
    from hitl_mcp.cli.remote import RemoteGate
    from hitl_mcp.gate import Gate

Record = dict[str, Any]


@main.group("grants")
def grants_group() -> None:
    """Standing approvals: let one requester's calls of one tool run at once, within a scope, for a while.

    \b
    Use a grant for a bounded stretch of routine work you would otherwise approve call by call ("the
    agent rebalances GOOGL this afternoon, up to 10 shares an order"): it names one tool and one
    requester, a --when over the arguments (or --any-arguments, said explicitly), an expiry no longer
    than [grants] max_seconds, optionally a number of --uses, and it can be revoked at once.
    Change the policy instead when the rule should hold for everyone, for good: a policy is reviewed in
    the config file, applies to every requester, and never expires.

    \b
    A grant is approved the way the calls it covers would be: you must be able to approve the first
    level of every rule those calls can reach, and where a rule needs more levels the grant waits for
    them (`hitl grants approve`). The requester can never grant itself; deny rules beat every grant.
    A covered call runs at once, audited `granted` with the grant's id.
    """


def _on_gate(as_name: str | None, work: Callable[[Gate, str], Awaitable[Record | list[Record]]]) -> Any:
    """Run `work` on a gate over the store as `--as` (or the OS user), its grants rendered as the API does."""
    from hitl_mcp.cli.common import with_gate

    principal = acting_as(as_name)
    settings = load(principal)
    if (refusal := deciding_refusal(settings)) is not None:
        raise NotAllowed(refusal)
    return with_gate(settings, lambda gate: work(gate, principal))


def _through_server(work: Callable[[RemoteGate], Awaitable[Any]]) -> Any:
    from hitl_mcp.cli.common import with_server

    return with_server(work)


def _record(grant: grants.Grant) -> Record:
    from hitl_mcp.web.grants_api import GrantRecord

    record: Record = GrantRecord.of(grant).model_dump(mode="json")
    return record


def _changed(
    as_name: str | None,
    local: Callable[[Gate, str], Awaitable[grants.Grant]],
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> Record:
    if through_server():
        acting_as(as_name)  # refuses --as: the token is who acts

        async def remote(gate: RemoteGate) -> Record:
            found: Record = (await gate.call(method, path, json=body)).json()
            return found

        result: Record = _through_server(remote)
        return result

    async def on_store(gate: Gate, principal: str) -> Record:
        return _record(await local(gate, principal))

    changed: Record = _on_gate(as_name, on_store)
    return changed


@grants_group.command("add")
@click.argument("tool")
@click.option(
    "--requester", required=True, metavar="PRINCIPAL", help="The one principal whose calls it covers."
)
@click.option(
    "--when",
    "when",
    metavar="EXPR",
    help="A condition over the call's arguments and preview values, as in a policy rule: "
    "\"symbol = 'GOOGL' AND quantity <= 10\".",
)
@click.option(
    "--any-arguments", is_flag=True, help="Cover every argument (instead of --when), said explicitly."
)
@click.option(
    "--expires",
    required=True,
    metavar="LIFETIME",
    help="How long it lasts: 30m, 2h, 7d; at most [grants] max_seconds (default 7 days).",
)
@click.option("--uses", type=click.IntRange(1, 1_000_000), help="How many calls it may cover (default: any).")
@click.option("--reason", help="Why, kept in the audit trail.")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the grant as JSON.")
@refusals
def add(
    tool: str,
    requester: str,
    when: str | None,
    any_arguments: bool,
    expires: str,
    uses: int | None,
    reason: str | None,
    as_name: str | None,
    as_json: bool,
) -> None:
    """Grant REQUESTER's calls of TOOL that meet --when (or --any-arguments) until it expires.

    A covered call runs at once, audited `granted` with the grant's id; others wait as before. You must
    be able to approve the first level of every rule TOOL's calls can reach; where a rule needs more
    levels the grant waits for them (`hitl grants approve ID`) and covers nothing until then. For a rule
    that should hold for every requester and for good, change the policy instead (`hitl grants --help`).
    """
    lifetime = grants.parse_lifetime(expires, "--expires")
    body = {
        "tool": tool,
        "requester": requester,
        "when": when,
        "any_arguments": any_arguments,
        "expires": expires,
        "uses": uses,
        "reason": reason,
    }
    record = _changed(
        as_name,
        lambda gate, principal: gate.add_grant(
            tool, requester, when, any_arguments, timedelta(seconds=lifetime), uses, reason, by=principal
        ),
        "POST",
        "/grants",
        body,
    )
    _show(record, as_json)


@grants_group.command("approve")
@click.argument("grant_id")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the grant as JSON.")
@refusals
def approve(grant_id: str, as_name: str | None, as_json: bool) -> None:
    """Approve a further level of a waiting grant; it covers calls once every level is in."""
    grant_id = grants.check_id(grant_id)
    record = _changed(
        as_name,
        lambda gate, principal: gate.approve_grant(grant_id, principal),
        "POST",
        f"/grants/{grant_id}/approve",
    )
    _show(record, as_json)


@grants_group.command("revoke")
@click.argument("grant_id")
@click.option("--as", "as_name", metavar="NAME", help="Act as this principal (default: your OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the grant as JSON.")
@refusals
def revoke(grant_id: str, as_name: str | None, as_json: bool) -> None:
    """End a grant: from the next call on, on every server of the store, it covers nothing."""
    grant_id = grants.check_id(grant_id)
    record = _changed(
        as_name,
        lambda gate, principal: gate.revoke_grant(grant_id, principal),
        "POST",
        f"/grants/{grant_id}/revoke",
    )
    _show(record, as_json)


@grants_group.command("list")
@click.option("--all", "every", is_flag=True, help="Expired, revoked and used-up grants too.")
@click.option("--json", "as_json", is_flag=True, help='Print {"grants": [...]} as JSON.')
@refusals
def list_grants(every: bool, as_json: bool) -> None:
    """Grants waiting or active, oldest first (--all: every grant)."""
    records: list[Record]
    if through_server():

        async def remote(gate: RemoteGate) -> list[Record]:
            found = await gate.call("GET", "/grants", params={"all": "true" if every else "false"})
            listed: list[Record] = found.json()["grants"]
            return listed

        records = _through_server(remote)
    else:
        from hitl_mcp.cli.common import with_gate

        async def on_store(gate: Gate) -> list[Record]:
            return [_record(grant) for grant in await gate.grants(include_finished=every)]

        records = with_gate(load(), on_store, readonly=True)
    if as_json:
        click.echo(json.dumps({"grants": records}, indent=2))
        return
    if not records:
        click.echo("No grants." if every else "No grants waiting or active (--all shows finished ones).")
        return
    now = time.time()
    rows = [
        (
            record["id"],
            record["status"],
            record["tool"],
            record["requester"],
            "any arguments" if record["any_arguments"] else f"when {record['when']}",
            _uses(record),
            _left(record, now),
        )
        for record in records
    ]
    click.echo(table(("ID", "STATUS", "TOOL", "REQUESTER", "SCOPE", "USES", "EXPIRES IN"), rows))


def _uses(record: Record) -> str:
    total = record["uses"]
    return f"{record['uses_made']}/{total}" if total is not None else f"{record['uses_made']}/any"


def _left(record: Record, now: float) -> str:
    left = datetime.fromisoformat(record["expires_at"]).timestamp() - now
    return time_left(left) if left > 0 else "expired"


def _show(record: Record, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    scope = "with any arguments" if record["any_arguments"] else f"when {record['when']}"
    lines = [
        f"Grant {record['id']} ({record['status']}): {record['tool']} from {record['requester']} {scope}",
        f"Expires    {record['expires_at']} (in {_left(record, time.time())})",
        f"Uses       {_uses(record)}",
        f"Approved   {', '.join(record['approved_by'])}",
    ]
    if record["levels_needed"]:
        lines.append(
            f"Waits on   {'; '.join(record['levels_needed'])}  (`hitl grants approve {record['id']}`)"
        )
    if record["reason"]:
        lines.append(f"Reason     {record['reason']}")
    if record["revoked_by"]:
        lines.append(f"Revoked    by {record['revoked_by']} at {record['revoked_at']}")
    from hitl_mcp import display

    click.echo("\n".join(display.visible_lines(line) for line in lines))

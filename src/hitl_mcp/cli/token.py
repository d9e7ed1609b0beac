"""`hitl token`: bearer tokens that let HTTP clients act as principals, kept in the store.

`new` stores a token's SHA-256 and prints the token once; every server on the store honours it at once,
and `revoke` ends it at once. `new --config` prints the lines for the config file instead (a token that
lives in `[principals.NAME] token_sha256`, read when a server starts).
"""

from __future__ import annotations

import getpass
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals, table
from hitl_mcp.config import check_principal
from hitl_mcp.errors import ConfigError, NotFound
from hitl_mcp.store import open_store
from hitl_mcp.store.credentials import CredentialStore, StoredToken
from hitl_mcp.tokens import DEFAULT_EXPIRY, make_token, new_token, parse_expiry, parse_roles, token_sha256

T = TypeVar("T")
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@main.group()
def token() -> None:
    """Bearer tokens for `hitl serve --http`: each one lets its holder act as one principal."""


def _with_credentials(work: Callable[[CredentialStore], Awaitable[T]], *, readonly: bool = False) -> T:
    settings = load()

    async def run() -> T:
        store = await open_store(settings, readonly=readonly)
        try:
            if not isinstance(store, CredentialStore):
                raise ConfigError("HITL_DB: this store keeps no tokens")
            return await work(store)
        finally:
            await store.close()

    return anyio.run(run)


def _who() -> str:
    """Who makes or revokes a token from this terminal, for the audit trail."""
    try:
        return check_principal(getpass.getuser(), "your OS user name")
    except (ConfigError, OSError, KeyError):
        return "cli"


def when(at: float | None, never: str = "never") -> str:
    if at is None:
        return never
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


@token.command("new")
@click.argument("principal")
@click.option("--name", help="A label to list and revoke it by (default: PRINCIPAL-ID).")
@click.option(
    "--roles",
    default="",
    help="Comma-separated roles its holder gets beyond PRINCIPAL's in the config file.",
)
@click.option(
    "--expires",
    default=DEFAULT_EXPIRY,
    show_default=True,
    help="How long it lasts: days, hours or minutes (90d, 12h, 30m), or never.",
)
@click.option(
    "--config",
    "for_config",
    is_flag=True,
    help="Print [principals.PRINCIPAL] lines for the config file instead of storing it.",
)
@refusals
def new(principal: str, name: str | None, roles: str, expires: str, for_config: bool) -> None:
    """Make a token for PRINCIPAL and print it once; only its SHA-256 is kept.

    Give the token to PRINCIPAL's client (an MCP client, an approver bot, `hitl` with HITL_TOKEN), which
    sends it as `Authorization: Bearer TOKEN`. Every `hitl serve --http` on this store honours it at once,
    with no restart, until it expires or `hitl token revoke` ends it. If it is lost, make a new one.

    With --config the token is not stored: paste the printed lines into the config file named by
    HITL_CONFIG (into PRINCIPAL's [principals.PRINCIPAL] table, if it has one) and restart the server.
    """
    principal = check_principal(principal, "PRINCIPAL")
    if for_config:
        _print_config_lines(principal)
        return
    granted, lifetime = parse_roles(roles), parse_expiry(expires)
    secret, stored = _with_credentials(
        lambda store: make_token(
            store,
            principal,
            name=name,
            roles=granted,
            lifetime=lifetime,
            created_by=_who(),
            now=time.time(),
        )
    )
    extra = f", roles {', '.join(stored.roles)}" if stored.roles else ""
    click.echo(
        f"Token {stored.name} ({stored.id}) for {stored.principal}{extra}, expires "
        f"{when(stored.expires_at)} (shown once, only its SHA-256 is stored):\n"
    )
    click.echo(f"    {secret}\n")
    click.echo(
        "Clients send it as `Authorization: Bearer TOKEN`; servers on this store honour it now. "
        f"End it with `hitl token revoke {stored.name}`."
    )


def _print_config_lines(name: str) -> None:
    secret = new_token()
    # TOML bare keys allow letters, digits, _ and - only; a principal name may also hold . @ +.
    key = name if BARE_KEY.match(name) else f'"{name}"'
    # The token stays out of the block to paste, so it never ends up in the config file.
    click.echo(f"Token for {name} (shown once, stored nowhere):\n")
    click.echo(f"    {secret}\n")
    click.echo("Add to the config file named by HITL_CONFIG, then restart `hitl serve --http`:\n")
    click.echo(f"[principals.{key}]")
    click.echo(f'token_sha256 = "{token_sha256(secret)}"')


def state_of(stored: StoredToken, now: float) -> str:
    if stored.revoked_at is not None:
        return f"revoked {when(stored.revoked_at)}"
    if stored.expires_at is not None and stored.expires_at <= now:
        return "expired"
    return "live"


@token.command("list")
@click.option("--principal", help="Only this principal's tokens.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, for scripts.")
@refusals
def list_tokens(principal: str | None, as_json: bool) -> None:
    """The tokens in the store: name, id, principal, roles, created, expires, last used — never a token,
    which is stored nowhere."""
    if principal is not None:
        principal = check_principal(principal, "--principal")
    tokens = _with_credentials(lambda store: store.token_list(principal), readonly=True)
    now = time.time()
    if as_json:
        rows = [
            {
                "id": t.id,
                "name": t.name,
                "principal": t.principal,
                "roles": list(t.roles),
                "created_at": t.created_at,
                "created_by": t.created_by,
                "expires_at": t.expires_at,
                "last_used_at": t.last_used_at,
                "revoked_at": t.revoked_at,
                "state": state_of(t, now).split()[0],
            }
            for t in tokens
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not tokens:
        click.echo("no tokens in the store (make one with `hitl token new PRINCIPAL`)")
        return
    header = ("NAME", "ID", "PRINCIPAL", "ROLES", "CREATED", "EXPIRES", "LAST USED", "STATE")
    click.echo(
        table(
            header,
            [
                (
                    t.name,
                    t.id,
                    t.principal,
                    ",".join(t.roles) or "-",
                    when(t.created_at),
                    when(t.expires_at),
                    when(t.last_used_at, "never"),
                    state_of(t, now),
                )
                for t in tokens
            ],
        )
    )


@token.command("revoke")
@click.argument("ref", metavar="NAME|ID")
@refusals
def revoke(ref: str) -> None:
    """End a stored token at once: every server on the store refuses it from now on."""
    revoked = _with_credentials(lambda store: store.token_revoke(ref, _who(), time.time()))
    if revoked is None:
        raise NotFound(f"NAME|ID: no live token is named {ref[:80]!r} or has that id (see `hitl token list`)")
    click.echo(f"revoked {revoked.name} ({revoked.id}) of {revoked.principal}")

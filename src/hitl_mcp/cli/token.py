"""`hitl token`: bearer tokens that let HTTP clients act as principals."""

from __future__ import annotations

import re

import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import refusals
from hitl_mcp.config import check_principal
from hitl_mcp.tokens import new_token, token_sha256

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@main.group()
def token() -> None:
    """Bearer tokens for `hitl serve --http`: each one lets its holder act as one principal."""


@token.command("new")
@click.argument("name")
@refusals
def new(name: str) -> None:
    """Make a token for principal NAME: print it once, with the config lines that admit it.

    Give the token to NAME's MCP client, which sends it as `Authorization: Bearer TOKEN`. Paste the
    printed lines into the config file named by HITL_CONFIG (into NAME's existing [principals.NAME] table,
    beside its roles, if it has one), then restart `hitl serve --http`. Only the token's SHA-256 goes in
    the file and the token is kept nowhere else: if it is lost, make a new one, which replaces it.
    """
    check_principal(name, "NAME")
    secret = new_token()
    # TOML bare keys allow letters, digits, _ and - only; a principal name may also hold . @ +.
    key = name if BARE_KEY.match(name) else f'"{name}"'
    # The token stays out of the block to paste, so it never ends up in the config file.
    click.echo(f"Token for {name} (shown once, stored nowhere):\n")
    click.echo(f"    {secret}\n")
    click.echo("Add to the config file named by HITL_CONFIG, then restart `hitl serve --http`:\n")
    click.echo(f"[principals.{key}]")
    click.echo(f'token_sha256 = "{token_sha256(secret)}"')

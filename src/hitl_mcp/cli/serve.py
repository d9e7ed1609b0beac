"""`hitl serve`: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals
from hitl_mcp.config import Settings, with_upstreams
from hitl_mcp.upstream.desktop import load_mcp_servers

if TYPE_CHECKING:
    from hitl_mcp.auth import PrincipalTokens
    from hitl_mcp.web import InboxOff, SignIn


@main.command()
@click.option("--http", "use_http", is_flag=True, help="Speak streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind with --http.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port for --http."
)
@click.option(
    "--upstreams",
    "upstreams_file",
    type=click.Path(path_type=Path),
    help="Also the MCP servers of a desktop client's configuration (its mcpServers JSON, such as "
    "claude_desktop_config.json) as upstreams; their tools' annotations decide what is gated.",
)
@refusals
def serve(use_http: bool, host: str, port: int, upstreams_file: Path | None) -> None:
    """Run the MCP server: stdio by default, or HTTP at http://HOST:PORT/mcp.

    Over stdio the server acts as the principal named by HITL_PRINCIPAL (default: agent): requests it
    files are requested by that principal, and it can never approve them itself.

    Over HTTP each client is the principal whose token it sends as `Authorization: Bearer TOKEN` (made by
    `hitl token new PRINCIPAL` and kept in the store, or a `[principals.NAME] token_sha256` in the config
    file); requests without a known token get 401. With no token anywhere the server binds only a loopback
    address, and every client acts as HITL_PRINCIPAL until the first token is made.
    """
    from hitl_mcp.server import build_server, serve_http

    settings = load()
    if upstreams_file is not None:
        settings = with_upstreams(settings, load_mcp_servers(upstreams_file))
    # A store that cannot be used is refused in one line before anything is served.
    stored = anyio.run(check_store, settings)
    # On stderr, which stdio leaves free: a rule that fails on every call should be heard of before one does.
    for warning in settings.warnings:
        click.echo(f"hitl-mcp: warning: {warning}", err=True)
    if not use_http:
        build_server(settings).run()
        return

    from hitl_mcp.auth import server_tokens

    # Decided before anything binds: an exposed server without tokens never starts.
    tokens = server_tokens(settings, host, stored=stored)
    app = build_server(settings, tokens=tokens)
    if tokens.open_principal is not None:
        who = f"as {settings.principal!r}"
        click.echo(
            "hitl-mcp: warning: no principal has a token_sha256 and the store holds no token, so every "
            f"client that can connect acts as {settings.principal!r} until one is made; see "
            "`hitl token new --help` before serving anyone else",
            err=True,
        )
    else:
        named = ", ".join(tokens.principals)
        who = f"for the principals {named} and the store's tokens" if named else "for the store's tokens"
    store = settings.store.describe()
    click.echo(f"hitl-mcp: serving MCP at http://{host}:{port}/mcp {who}, store {store}", err=True)
    serve_http(app, host=host, port=port, sign_in=inbox_sign_in(settings, tokens, host, port), tokens=tokens)


def inbox_sign_in(
    settings: Settings, tokens: PrincipalTokens | None, host: str, port: int
) -> SignIn | InboxOff:
    """How people sign in to the inbox served beside /mcp, said on stderr; `InboxOff` when it cannot be
    served safely, which leaves /mcp as it is and a page saying why everywhere else."""
    from hitl_mcp.web import InboxOff, SignIn

    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        sign_in = SignIn.for_server(settings, tokens, base)
    except InboxOff as off:
        click.echo(f"hitl-mcp: the inbox and /api/v1 are off: {off}", err=True)
        return off
    if sign_in.sso is not None:
        click.echo(
            f"hitl-mcp: inbox at {base}/ (sign in with SSO at {sign_in.sso.settings.issuer}; the provider "
            f"must allow the redirect URI {sign_in.sso.redirect_uri}), API at {base}/api/v1",
            err=True,
        )
    elif sign_in.link_token is None:
        click.echo(
            f"hitl-mcp: inbox at {base}/ (sign in with a principal's token), API at {base}/api/v1", err=True
        )
    else:
        # One line, for a person to open and a script to read: the link lasts as long as this server.
        click.echo(
            f"hitl-mcp: inbox at {base}/ — sign in as {sign_in.link_principal} (until this server stops): "
            f"{base}/login?token={sign_in.link_token}",
            err=True,
        )
    return sign_in


async def check_store(settings: Settings) -> int:
    """How many live tokens the store holds (a store without any counts as none)."""
    import time

    from hitl_mcp.store import open_store
    from hitl_mcp.store.credentials import CredentialStore

    store = await open_store(settings)
    try:
        return await store.token_count(time.time()) if isinstance(store, CredentialStore) else 0
    finally:
        await store.close()

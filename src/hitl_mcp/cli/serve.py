"""`hitl serve`: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import anyio
import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals
from hitl_mcp.config import Settings


@main.command()
@click.option("--http", "use_http", is_flag=True, help="Speak streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind with --http.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port for --http."
)
@refusals
def serve(use_http: bool, host: str, port: int) -> None:
    """Run the MCP server: stdio by default, or HTTP at http://HOST:PORT/mcp.

    Over stdio the server acts as the principal named by HITL_PRINCIPAL (default: agent): requests it
    files are requested by that principal, and it can never approve them itself.

    Over HTTP each client is the principal whose token it sends as `Authorization: Bearer TOKEN`
    (`[principals.NAME] token_sha256` in the config file, made by `hitl token new NAME`); requests without a
    known token get 401. With no token configured the server binds only a loopback address, and every
    client acts as HITL_PRINCIPAL.
    """
    from hitl_mcp.server import build_server, serve_http

    settings = load()
    # A store that cannot be used is refused in one line before anything is served.
    anyio.run(check_store, settings)
    # On stderr, which stdio leaves free: a rule that fails on every call should be heard of before one does.
    for warning in settings.warnings:
        click.echo(f"hitl-mcp: warning: {warning}", err=True)
    if not use_http:
        build_server(settings).run()
        return

    from hitl_mcp.auth import http_tokens

    # Decided before anything binds: an exposed server without tokens never starts.
    tokens = http_tokens(settings, host)
    app = build_server(settings, tokens=tokens)
    if tokens is None:
        who = f"as {settings.principal!r}"
        click.echo(
            f"hitl-mcp: warning: no principal has a token_sha256, so every client that can connect acts as "
            f"{settings.principal!r}; see `hitl token new --help` before serving anyone else",
            err=True,
        )
    else:
        who = "for the principals " + ", ".join(tokens.principals) + " (bearer tokens)"
    click.echo(f"hitl-mcp: serving MCP at http://{host}:{port}/mcp {who}, store {settings.db_path}", err=True)
    serve_http(app, host=host, port=port)


async def check_store(settings: Settings) -> None:
    from hitl_mcp.store.sqlite import SQLiteStore

    store = SQLiteStore(settings.db_path, busy_timeout=settings.gate.busy_timeout_seconds)
    await store.open()
    await store.close()

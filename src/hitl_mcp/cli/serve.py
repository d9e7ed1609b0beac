"""`hitl serve`: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals


@main.command()
@click.option("--http", "use_http", is_flag=True, help="Speak streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind with --http.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port for --http."
)
@refusals
def serve(use_http: bool, host: str, port: int) -> None:
    """Run the MCP server: stdio by default, or HTTP at http://HOST:PORT/mcp.

    The server acts as the principal named by HITL_PRINCIPAL (default: agent): requests it files are
    requested by that principal, and it can never approve them itself.
    """
    from hitl_mcp.server import build_server

    settings = load()
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

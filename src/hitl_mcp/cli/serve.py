"""`hitl serve`: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import anyio
import click

from hitl_mcp import logs
from hitl_mcp.cli.app import long_lived, main
from hitl_mcp.cli.common import load, refusals
from hitl_mcp.config import Settings, with_upstreams
from hitl_mcp.upstream.desktop import load_mcp_servers

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from hitl_mcp.auth import PrincipalTokens
    from hitl_mcp.server import ServerState
    from hitl_mcp.web import InboxOff, SignIn

logger = logging.getLogger("hitl_mcp.serve")


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
@click.option(
    "--log-format",
    type=click.Choice(get_args(logs.LogFormat)),
    help="How the log on stderr is written: text for a person, json for one JSON object a line "
    "(default: [logging] format, else text).",
)
@click.option(
    "--log-level",
    type=click.Choice(get_args(logs.LogLevel), case_sensitive=False),
    help="The least severe record written on stderr (default: [logging] level, else info).",
)
@refusals
def serve(
    use_http: bool,
    host: str,
    port: int,
    upstreams_file: Path | None,
    log_format: logs.LogFormat | None,
    log_level: str | None,
) -> None:
    """Run the MCP server: stdio by default, or HTTP at http://HOST:PORT/mcp.

    Over stdio the server acts as the principal named by HITL_PRINCIPAL (default: agent): requests it
    files are requested by that principal, and it can never approve them itself.

    Over HTTP each client is the principal whose token it sends as `Authorization: Bearer TOKEN` (made by
    `hitl token new PRINCIPAL` and kept in the store, or a `[principals.NAME] token_sha256` in the config
    file); requests without a known token get 401. With no token anywhere the server binds only a loopback
    address, and every client acts as HITL_PRINCIPAL until the first token is made.
    """
    from hitl_mcp.server import run_stdio, serve_http

    with long_lived():
        settings = _settings(log_format, log_level, upstreams_file)
        app, tokens = _started(settings, use_http, host, port)
    if tokens is None:
        run_stdio(app)
        return
    serve_http(
        app,
        host=host,
        port=port,
        sign_in=inbox_sign_in(settings, tokens, host, port),
        tokens=tokens,
        access_log=settings.logging.access_log,
    )


def _settings(
    log_format: logs.LogFormat | None, log_level: str | None, upstreams_file: Path | None
) -> Settings:
    """The settings, with the command line's logging over the file's (logging set up by them) and the
    desktop file's upstreams added."""
    settings = load()
    chosen = {"format": log_format, "level": log_level.lower() if log_level else None}
    logging_settings = settings.logging.model_copy(update={k: v for k, v in chosen.items() if v is not None})
    settings = replace(settings, logging=logging_settings)
    logs.setup(logging_settings)
    if upstreams_file is not None:
        settings = with_upstreams(settings, load_mcp_servers(upstreams_file))
    return settings


def _started(
    settings: Settings, use_http: bool, host: str, port: int
) -> tuple[MCPServer[ServerState], PrincipalTokens | None]:
    """The server to serve, and over HTTP the tokens it admits (None: stdio)."""
    from hitl_mcp.server import build_server

    # A store that cannot be used is refused in one line before anything is served.
    stored = anyio.run(check_store, settings)
    # On stderr, which stdio leaves free: a rule that fails on every call should be heard of before one does.
    for warning in settings.warnings:
        logger.warning("%s", warning)
    if not use_http:
        return build_server(settings), None

    from hitl_mcp.auth import server_tokens

    # Decided before anything binds: an exposed server without tokens never starts.
    tokens = server_tokens(settings, host, stored=stored)
    app = build_server(settings, tokens=tokens)
    if tokens.open_principal is not None:
        who = f"as {settings.principal!r}"
        logger.warning(
            "no principal has a token_sha256 and the store holds no token, so every client that can connect "
            "acts as %r until one is made; see `hitl token new --help` before serving anyone else",
            settings.principal,
        )
    else:
        named = ", ".join(tokens.principals)
        who = f"for the principals {named} and the store's tokens" if named else "for the store's tokens"
    store = settings.store.describe()
    logger.info("serving MCP at http://%s:%s/mcp %s, store %s", host, port, who, store)
    return app, tokens


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
        logger.info("the inbox and /api/v1 are off: %s", off)
        return off
    if sign_in.sso is not None:
        logger.info(
            "inbox at %s/ (sign in with SSO at %s; the provider must allow the redirect URI %s), "
            "API at %s/api/v1",
            base,
            sign_in.sso.settings.issuer,
            sign_in.sso.redirect_uri,
            base,
        )
    elif sign_in.link_token is None:
        logger.info("inbox at %s/ (sign in with a principal's token), API at %s/api/v1", base, base)
    else:
        # One line, for a person to open and a script to read: the link lasts as long as this server.
        logger.info(
            "inbox at %s/ — sign in as %s (until this server stops): %s/login?token=%s",
            base,
            sign_in.link_principal,
            base,
            sign_in.link_token,
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

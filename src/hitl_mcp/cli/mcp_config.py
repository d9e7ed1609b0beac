"""`hitl mcp-config`: the `mcpServers` entry a desktop MCP client needs, with this installation's paths."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals


@main.command("mcp-config")
@click.option("--http", "use_http", is_flag=True, help="An entry for `hitl serve --http` instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address `hitl serve --http` binds.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Its port, with --http."
)
@refusals
def mcp_config(use_http: bool, host: str, port: int) -> None:
    """Print a ready {"mcpServers": {"hitl": …}} entry for a desktop MCP client.

    Paste it into the client's MCP configuration, merging "hitl" into any "mcpServers" it already has:
    for Claude Desktop, claude_desktop_config.json (Settings → Developer → Edit Config); for Cursor,
    ~/.cursor/mcp.json or .cursor/mcp.json in a project. Then restart the client.

    By default the client starts `hitl serve` itself over stdio: the entry holds the absolute path of this
    installation's `hitl`, and an env with HITL_CONFIG and HITL_DB as this command sees them (absolute)
    and HITL_PRINCIPAL, so the client's agent and your `hitl` commands share one store and one policy.
    Run this command in the environment you use `hitl` in.

    With --http the entry points at http://HOST:PORT/mcp, where you run `hitl serve --http` yourself. When
    the config gives principals tokens, the entry carries an "Authorization: Bearer TOKEN" header: make a
    token with `hitl token new NAME`, paste the lines it prints into the config file, restart the server,
    and put the token in place of TOKEN.
    """
    settings = load()
    if use_http:
        entry: dict[str, Any] = {"type": "http", "url": f"http://{_url_host(host)}:{port}/mcp"}
        if any(principal.token_sha256 for principal in settings.principals.values()):
            entry["headers"] = {"Authorization": "Bearer TOKEN"}
        else:
            from hitl_mcp.auth import is_loopback

            if not is_loopback(host):
                click.echo(
                    f"hitl: note: `hitl serve --http --host {host}` refuses to start until principals have "
                    "tokens; see `hitl token new --help`",
                    err=True,
                )
    else:
        env = {"HITL_DB": settings.store.setting(), "HITL_PRINCIPAL": settings.principal}
        if settings.config_path is not None:
            env = {"HITL_CONFIG": str(settings.config_path), **env}
        entry = {**_command(), "env": env}
    click.echo(json.dumps({"mcpServers": {"hitl": entry}}, indent=2))


def _command() -> dict[str, Any]:
    """How to start `hitl serve`: the `hitl` beside this interpreter (the one this package is installed
    for), else the one this process was started as, else the interpreter running the package."""
    folder = Path(sys.executable).parent
    candidates = [folder / "hitl", folder / "hitl.exe", Path(sys.argv[0])]
    found = shutil.which("hitl")
    for candidate in candidates + ([Path(found)] if found else []):
        if candidate.name in ("hitl", "hitl.exe") and candidate.is_file():
            # Absolute, but not resolved: a venv's scripts must be started from the venv, not a link's target.
            return {"command": str(candidate.absolute()), "args": ["serve"]}
    return {"command": str(Path(sys.executable).absolute()), "args": ["-m", "hitl_mcp", "serve"]}


def _url_host(host: str) -> str:
    """An IPv6 address goes in brackets in a URL."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

"""`hitl mcp-config`: the `mcpServers` entry a desktop MCP client needs, with this installation's paths."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals
from hitl_mcp.config import with_upstreams
from hitl_mcp.upstream.desktop import load_mcp_servers

CLIENTS = ("claude-desktop", "claude-code", "cursor", "vscode")


@main.command("mcp-config")
@click.option("--http", "use_http", is_flag=True, help="An entry for `hitl serve --http` instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address `hitl serve --http` binds.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Its port, with --http."
)
@click.option(
    "--upstreams",
    "upstreams_file",
    type=click.Path(path_type=Path),
    help="Put the MCP servers of this desktop-client configuration (an mcpServers JSON) behind the gate: "
    "the entry runs `hitl serve --upstreams FILE`, with FILE absolute. Checked as `hitl serve` reads it.",
)
@click.option(
    "--client",
    type=click.Choice(CLIENTS),
    help="Print the entry in this client's own format: a claude_desktop_config.json entry, a `claude mcp "
    "add` command line, a Cursor mcp.json entry, or a VS Code .vscode/mcp.json. Default: a generic "
    "mcpServers entry.",
)
@click.option(
    "--server",
    "server_url",
    metavar="URL",
    help="With --http: where the team's server is reached (https://hitl.example.com); the entry points at "
    "URL/mcp instead of http://HOST:PORT/mcp and always carries an Authorization header.",
)
@refusals
def mcp_config(
    use_http: bool,
    host: str,
    port: int,
    upstreams_file: Path | None,
    client: str | None,
    server_url: str | None,
) -> None:
    """Print a ready {"mcpServers": {"hitl": …}} entry for a desktop MCP client.

    Paste it into the client's MCP configuration, merging "hitl" into any "mcpServers" it already has:
    for Claude Desktop, claude_desktop_config.json (Settings → Developer → Edit Config); for Cursor,
    ~/.cursor/mcp.json or .cursor/mcp.json in a project. Then restart the client.

    By default the client starts `hitl serve` itself over stdio: the entry holds the absolute path of this
    installation's `hitl`, and an env with HITL_CONFIG and HITL_DB as this command sees them (absolute)
    and HITL_PRINCIPAL, so the client's agent and your `hitl` commands share one store and one policy.
    Run this command in the environment you use `hitl` in. HITL_CONFIG is always in the env: empty when
    it is not set here, so the server runs on built-in defaults rather than whatever the client inherits.

    With --upstreams FILE the entry starts `hitl serve --upstreams FILE`: move the client's current
    configuration to FILE and replace its servers with this one entry.

    With --http the entry points at http://HOST:PORT/mcp, where you run `hitl serve --http` yourself. When
    the config gives principals tokens, the entry carries an "Authorization: Bearer TOKEN" header: make a
    token with `hitl token new NAME`, paste the lines it prints into the config file, restart the server,
    and put the token in place of TOKEN.

    \b
    For a team's server, each agent with a token of its own:
      hitl mcp-config --client claude-code --http --server https://hitl.example.com
      hitl mcp-config --client vscode --http --server https://hitl.example.com > .vscode/mcp.json
    """
    settings = load()
    if upstreams_file is not None and use_http:
        raise click.UsageError(
            "--upstreams goes into a stdio entry; with --http, start `hitl serve --http --upstreams FILE`"
        )
    if server_url is not None and not use_http:
        raise click.UsageError("--server names an HTTP server: add --http")
    if use_http:
        url = f"http://{_url_host(host)}:{port}/mcp"
        if server_url is not None:
            url = _server_mcp_url(server_url)
        entry: dict[str, Any] = {"type": "http", "url": url}
        if server_url is not None or any(p.token_sha256 for p in settings.principals.values()):
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
        env = {
            # Always present, so the entry says which policy governs the agent; "" means built-in defaults.
            "HITL_CONFIG": "" if settings.config_path is None else str(settings.config_path),
            "HITL_DB": settings.store.setting(),
            "HITL_PRINCIPAL": settings.principal,
        }
        if settings.config_path is None:
            click.echo(
                "hitl: note: HITL_CONFIG is not set, so the entry's server runs on built-in defaults; set "
                "it to your TOML file and run this again to give the agent your policy",
                err=True,
            )
        entry = _command()
        if upstreams_file is not None:
            absolute = upstreams_file.expanduser().resolve()
            # Refused now, in one line, rather than by the server the client starts where nobody reads it.
            with_upstreams(settings, load_mcp_servers(absolute))
            entry["args"] = [*entry["args"], "--upstreams", str(absolute)]
        entry = {**entry, "env": env}
    click.echo(client_format(client, entry))


def client_format(client: str | None, entry: dict[str, Any]) -> str:
    """`entry` (a generic mcpServers entry: command/args/env, or type/url/headers) as `client` takes it."""
    remote = entry.get("type") == "http"
    if client == "claude-code":
        return _claude_code_command(entry)
    if client == "vscode":
        # VS Code asks for the token when it starts the server and keeps it in its secret storage.
        if not remote:
            return json.dumps({"servers": {"hitl": {"type": "stdio", **entry}}}, indent=2)
        document: dict[str, Any] = {"servers": {"hitl": dict(entry)}}
        if "headers" in entry:
            document["inputs"] = [
                {
                    "type": "promptString",
                    "id": "hitl-token",
                    "description": "Your hitl token",
                    "password": True,
                }
            ]
            document["servers"]["hitl"]["headers"] = {"Authorization": "Bearer ${input:hitl-token}"}
        return json.dumps(document, indent=2)
    if client == "cursor" and remote:
        cursor = {"url": entry["url"], **({"headers": entry["headers"]} if "headers" in entry else {})}
        return json.dumps({"mcpServers": {"hitl": cursor}}, indent=2)
    if client == "claude-desktop" and remote:
        # Claude Desktop's config file starts local servers only: a remote one is reached through the
        # mcp-remote bridge (npm), the header's value in the env so a space in it survives every platform.
        bridge: dict[str, Any] = {"command": "npx", "args": ["-y", "mcp-remote", entry["url"]]}
        if "headers" in entry:
            bridge["args"] += ["--header", "Authorization:${HITL_AUTHORIZATION}"]
            bridge["env"] = {"HITL_AUTHORIZATION": entry["headers"]["Authorization"]}
        return json.dumps({"mcpServers": {"hitl": bridge}}, indent=2)
    return json.dumps({"mcpServers": {"hitl": entry}}, indent=2)


def _claude_code_command(entry: dict[str, Any]) -> str:
    if entry.get("type") == "http":
        words = ["claude", "mcp", "add", "--transport", "http", "hitl", entry["url"]]
        for name, value in entry.get("headers", {}).items():
            words += ["--header", f"{name}: {value}"]
        return shlex.join(words)
    words = ["claude", "mcp", "add", "--transport", "stdio", "hitl"]
    for name, value in entry["env"].items():
        words += ["--env", f"{name}={value}"]
    return shlex.join([*words, "--", entry["command"], *entry["args"]])


def _server_mcp_url(server_url: str) -> str:
    parts = urlsplit(server_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise click.BadParameter(
            f"{server_url!r} is not a server URL such as https://hitl.example.com", param_hint="--server"
        )
    if parts.scheme == "http" and not _loopback_host(parts.hostname or ""):
        click.echo(
            "hitl: note: the token would cross the network in clear text over http://; put the server "
            "behind TLS (docs/team.md)",
            err=True,
        )
    return f"{server_url.strip().rstrip('/')}/mcp"


def _loopback_host(name: str) -> bool:
    from hitl_mcp.auth import is_loopback

    return is_loopback(name)


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

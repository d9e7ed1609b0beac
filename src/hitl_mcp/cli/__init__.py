"""The human face: `hitl`. Parses, establishes who is acting, calls the gate, renders the answer.

Each command's module is imported when that command runs (`hitl_mcp.cli.app.COMMANDS`), not here.
"""

from hitl_mcp.cli.app import main

__all__ = ["main"]

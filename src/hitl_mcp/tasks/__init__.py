"""Gated calls as MCP tasks: `core` is protocol-neutral (the task a request is, its cancel, its final
result); `extension` serves the 2026-07-28 tasks extension on top of it."""

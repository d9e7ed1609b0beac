"""Why a session to an upstream failed, in a person's words: `command not found: npx`, `exited with status
1; its last line on stderr: …`, `cannot connect: …`."""

from __future__ import annotations

import httpx2
from mcp.shared.exceptions import MCPError

from hitl_mcp.upstream.http import HttpTransport
from hitl_mcp.upstream.stdio import StartFailed, StdioTransport


def describe_transport(transport: StdioTransport | HttpTransport) -> str:
    """What the transport knows of why things went wrong, if anything."""
    if isinstance(transport, StdioTransport):
        if transport.process is None:
            return ""
        if transport.stopped_running:  # it did not end by itself: hitl stopped it
            return transport.last_words().removeprefix("; ")
        return transport.exit_reason()
    status = transport.tracking.last_error_status
    return f"it answered HTTP {status}" if status else ""


def describe_failure(error: BaseException, transport: StdioTransport | HttpTransport) -> str:
    """Why a session failed to open or went down, in a person's words."""
    leaf = _leaf(error)
    if isinstance(leaf, StartFailed):
        return str(leaf)
    if isinstance(transport, StdioTransport):
        if transport.process is not None and not transport.stopped_running:
            return transport.exit_reason()  # it ended by itself: that is why
        return describe(leaf) + transport.last_words()
    known = describe_transport(transport)
    return known if known and isinstance(leaf, MCPError) else describe(leaf)


def describe(error: BaseException) -> str:
    leaf = _leaf(error)
    if isinstance(leaf, httpx2.ConnectTimeout):
        return "timed out connecting"
    if isinstance(leaf, httpx2.ConnectError):
        return f"cannot connect: {leaf}" if str(leaf) else "cannot connect"
    if isinstance(leaf, httpx2.TransportError):
        return f"the connection failed: {type(leaf).__name__}: {leaf}"
    if isinstance(leaf, MCPError):
        return f"it answered error {leaf.code}: {leaf.message}"
    if isinstance(leaf, TimeoutError):
        return "timed out"
    return f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__


def _leaf(error: BaseException) -> BaseException:
    # Task groups wrap what failed in them; the first real failure is the one to name.
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error

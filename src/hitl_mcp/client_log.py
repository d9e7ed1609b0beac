"""The server's notable events — a request filed, decided, executed, failed — as MCP log messages, for the
clients that ask for them.

Clients of the handshake-era protocol (2025-11-25 and before) ask with `logging/setLevel` and then hear of
every request that changes, in this process or any other, at that level and above. Clients of 2026-07-28
opt in per request (the reserved `_meta` log-level key): they hear of what their own call did. MCP marks
the whole logging capability deprecated as of 2026-07-28; the SDK's deprecation warnings are silenced
here, where using it is deliberate.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import LOG_LEVEL_META_KEY, EmptyResult, LoggingLevel, SetLevelRequestParams

from hitl_mcp.models import AuditEvent
from hitl_mcp.sdk_seams import connection_of

logger = logging.getLogger(__name__)

LEVELS: tuple[LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
EVENT_LEVELS: dict[str, LoggingLevel] = {
    "filed": "info",
    "policy-auto-approved": "info",
    "granted": "info",
    "claimed": "debug",
    "executed": "info",
    "approved": "notice",
    "rejected": "notice",
    "cancelled": "notice",
    "retried": "notice",
    "edited": "notice",
    "escalated": "warning",
    "expired": "warning",
    "denied": "warning",
    "failed": "error",
    "outcome-unknown": "error",
}
LOGGER_NAME = "hitl"


def level_of(event: str) -> LoggingLevel:
    return EVENT_LEVELS.get(event, "info")


def status_after(event: AuditEvent, current: str | None) -> str | None:
    """Where `event` left its request: fixed for most events; a decision says it in its details."""
    from hitl_mcp.report import STATUS_AFTER

    decided = event.details.get("status") if event.event in ("approved", "rejected") else None
    found = decided if isinstance(decided, str) else STATUS_AFTER.get(event.event)
    return found or current


def message(event: AuditEvent, tool: str | None, status: str | None) -> dict[str, Any]:
    """One event as log data: structured, so the summary an agent wrote stays data in its own field."""
    data: dict[str, Any] = {"request_id": event.request_id, "event": event.event, "actor": event.actor}
    if tool is not None:
        data["tool"] = tool
    if status is not None:
        data["status"] = status
    if "error" in event.details:
        data["error"] = event.details["error"]
    return data


async def send(session: ServerSession, level: LoggingLevel, data: Any, *, related: Any = None) -> None:
    """A log message on `session`; dropped by the SDK on a 2026-07-28 request that did not opt in."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await session.send_log_message(level=level, data=data, logger=LOGGER_NAME, related_request_id=related)


def opted_in(meta: Mapping[str, Any] | None, level: LoggingLevel) -> bool:
    """Whether a 2026-07-28 request asked for log messages at `level` (its `_meta` names the least severe
    level it wants; without it, none). Asked before a message is built: the SDK would drop it too, but only
    after the deprecated call's warning machinery ran."""
    wanted = (meta or {}).get(LOG_LEVEL_META_KEY)
    return wanted in LEVELS and LEVELS.index(level) >= LEVELS.index(wanted)


class LogListeners:
    """Handshake-era connections that asked for log messages, each with the least severe level it wants.

    Keyed by the connection, which outlives the per-request session object the handler sees (the SDK
    offers no public way to it). Held strongly: nothing else keeps it alive between requests on every
    transport. A closed client is forgotten at the first message that cannot reach it."""

    def __init__(self) -> None:
        self._levels: dict[Connection, int] = {}
        self.on_listen: Callable[[], None] | None = None

    def __bool__(self) -> bool:
        return len(self._levels) > 0

    async def set_level(
        self, ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
    ) -> EmptyResult:
        self._levels[connection_of(ctx.session)] = LEVELS.index(params.level)
        if self.on_listen is not None:
            self.on_listen()
        return EmptyResult()

    async def emit(self, level: LoggingLevel, data: Any) -> None:
        rank = LEVELS.index(level)
        for connection, wanted in list(self._levels.items()):
            if rank < wanted:
                continue
            try:
                await connection.log(level, data, LOGGER_NAME)
            except Exception:  # the client went away: forget it rather than fail the others
                logger.debug("dropping a closed log listener")
                self._levels.pop(connection, None)

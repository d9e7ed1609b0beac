"""`list_pending` answered beneath MCPServer's tool machinery: the busiest read, a page of up to 200 lines.

The tool registered in `server.py` stays what clients list and what answers anything unusual. This server
middleware answers the plain call — its arguments of exactly the declared types, within their bounds, no
task, no log request — with the page the store built as JSON, written once: MCPServer would parse the
arguments into a model, check the page against `SummaryPage`, dump the result, check it against the
protocol's result type and dump it again, none of which can change a page the gate built from its own rows
(the client still checks it against the listed output schema, as before). It adds what the SDK adds to a
2026-07-28 result (`resultType`, the `serverInfo` stamp). Anything else goes on to the tool, so answers
and refusals are the same either way; only their cost differs (`list_page_server_ms_100k`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp_types import LOG_LEVEL_META_KEY
from pydantic_core import to_json

from hitl_mcp.direct_answer import as_served, plain_arguments
from hitl_mcp.errors import HitlError
from hitl_mcp.gate import MAX_PAGE, Gate

TOOL = "list_pending"
CURSOR = re.compile(r"[0-9]{1,18}")


def pending_page(
    gate_of: Callable[[ServerRequestContext[Any, Any]], Gate], server_info: dict[str, Any]
) -> ServerMiddleware[Any]:
    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params
        if ctx.method != "tools/call" or not params or params.get("name") != TOOL:
            return await call_next(ctx)
        asked = _plain(params)
        if asked is None:
            return await call_next(ctx)
        try:
            rows = await gate_of(ctx).summaries(**asked)
        except HitlError:
            return await call_next(ctx)  # the tool says it in its words
        page = {"requests": rows.lines, "next_cursor": rows.next_cursor}
        result: dict[str, Any] = {
            "content": [{"type": "text", "text": to_json(page).decode()}],
            "structuredContent": page,
            "isError": False,
        }
        return as_served(result, ctx.protocol_version, server_info)

    return middleware


def _plain(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The call's arguments when they are exactly of the declared types and bounds; None otherwise (the
    tool then parses them, coercing or refusing as it always has)."""
    arguments = plain_arguments(params)
    meta = params.get("_meta")
    if arguments is None:
        return None
    if meta is not None and (not isinstance(meta, dict) or LOG_LEVEL_META_KEY in meta):
        return None
    tool, limit, cursor = arguments.get("tool"), arguments.get("limit", 50), arguments.get("cursor")
    if not set(arguments) <= {"tool", "limit", "cursor"}:
        return None
    if tool is not None and not isinstance(tool, str):
        return None
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        return None
    if cursor is not None and not (isinstance(cursor, str) and CURSOR.fullmatch(cursor)):
        return None
    return {"tool": tool, "limit": limit, "cursor": cursor}

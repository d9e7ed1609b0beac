"""Tool calls answered beneath MCPServer's tool machinery — the stdio lane's passed calls
(`gateway/fast_pass.py`) and `list_pending`'s plain call (`pending_page.py`): which calls qualify, and what
the SDK's result pipeline would have added to their answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_types import SERVER_INFO_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

PLAIN_CALL = frozenset({"name", "arguments", "_meta"})


def plain_arguments(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """A `tools/call`'s arguments when its params hold only a name, arguments (an object, absent or null)
    and `_meta`: no task, nothing else the tool machinery would act on. None otherwise."""
    if not PLAIN_CALL.issuperset(params):
        return None
    arguments = params.get("arguments")
    if arguments is None:
        return {}
    return arguments if isinstance(arguments, dict) else None


def as_served(result: dict[str, Any], version: str, server_info: Mapping[str, Any]) -> dict[str, Any]:
    """`result` with what the SDK adds to a 2026-07-28 result: its type, and the server's `serverInfo` stamp
    where it carries none (spec #3002). A result of the older protocol is left as it is."""
    if version not in MODERN_PROTOCOL_VERSIONS:
        return result
    result.setdefault("resultType", "complete")
    meta = result.get("_meta")
    if meta is None:
        result["_meta"] = {SERVER_INFO_META_KEY: dict(server_info)}
    elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
        result["_meta"] = {**meta, SERVER_INFO_META_KEY: dict(server_info)}
    return result

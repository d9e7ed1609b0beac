"""Passed calls answered beneath the SDK, for `hitl serve` over stdio: the gateway's cheapest path.

A `Lane` of `hitl_mcp.stdio_server`. It takes a `tools/call` of a passed tool whose upstream is a stdio
server speaking the call's protocol version (a 2026-07-28 call's envelope says it; an older client's is
what its handshake negotiated, followed as the lines go by), and forwards it as JSON — parsed once on the
way in, written once on the way out — through `Upstreams.call_raw`, with the pass's audit record
committed alongside exactly as on the SDK's path (`GatewayTools.pass_through`: the answer waits for both
and never comes without its record). The upstream's result goes back as it came, checked to be a tool's
result, with what the SDK adds to a 2026-07-28 one (`resultType`, and `serverInfo` where none is).

Everything else goes to the SDK as before — other methods, the handshake itself; a call asking for log
messages, a task or anything beyond a name and arguments; a tool the gateway would refuse, make
wait or file; an upstream on HTTP or another version; a process with a tracer provider (the SDK's server
span) — so a client sees the same either way, at a different cost (`gateway_pass_ratio` in `make bench`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from functools import partial
from typing import Any, TypeGuard

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from opentelemetry import trace

from hitl_mcp.direct_answer import as_served, plain_arguments
from hitl_mcp.gateway.tools import Exposed, GatewayTools, failed, not_answered
from hitl_mcp.json_input import protocol_line

logger = logging.getLogger(__name__)

RequestId = int | str


class FastPass:
    """The lane: `__call__` takes a line from stdin, or leaves it to the SDK by answering None."""

    def __init__(self, tools: GatewayTools, principal: str, server_info: dict[str, Any]) -> None:
        self.tools = tools
        self.principal = principal
        self.server_info = server_info
        self.handshake = False
        """The client began with `initialize`: its calls are in the version negotiated then."""
        self._offered: str | None = None
        self.negotiated: str | None = None
        """The handshake's version, once the client said it is initialized (until then the SDK answers)."""
        self.calls: dict[RequestId, anyio.CancelScope] = {}

    def __call__(self, line: bytes) -> Awaitable[bytes | None] | None:
        if b'"tools/call"' in line:
            return self._call(line)
        if self.calls and b'"notifications/cancelled"' in line:
            return self._cancel(line)
        if b'"initialize' in line or b'"notifications/initialized"' in line:
            self._follow_handshake(line)
        return None

    def _follow_handshake(self, line: bytes) -> None:
        """Note the version the SDK negotiates (its rule: the client's if it is one of the handshake
        versions, else the latest) and when the client is initialized; the SDK still answers both."""
        message = _parsed(line)
        method = message.get("method") if message is not None else None
        if method == "initialize" and message is not None:
            params = message.get("params")
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            self.handshake, self.negotiated = True, None
            self._offered = (
                requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
            )
        elif method == "notifications/initialized" and self.handshake:
            self.negotiated = self._offered

    def _call(self, line: bytes) -> Awaitable[bytes | None] | None:
        message = _parsed(line)
        if message is None or message.get("method") != "tools/call" or message.get("jsonrpc") != "2.0":
            return None
        request_id, params = message.get("id"), message.get("params")
        if not _is_id(request_id) or not isinstance(params, dict) or request_id in self.calls:
            return None
        name, arguments = params.get("name"), plain_arguments(params)
        exposed = self.tools.passed.get(name) if isinstance(name, str) else None
        if exposed is None or arguments is None:
            return None
        version = self._version(params.get("_meta"))
        if version is None or not self._forwards(exposed, version):
            return None
        return self._pass(request_id, exposed, arguments, version)

    def _version(self, meta: object) -> str | None:
        """The protocol version a call is in, when the lane may take it: a 2026-07-28 call carries it in
        its envelope; an older client's is the handshake's. None leaves the call to the SDK."""
        if self.handshake:
            if meta is not None and (not isinstance(meta, dict) or PROTOCOL_VERSION_META_KEY in meta):
                return None
            return self.negotiated
        if not isinstance(meta, dict) or LOG_LEVEL_META_KEY in meta:
            return None
        version = meta.get(PROTOCOL_VERSION_META_KEY)
        if version not in MODERN_PROTOCOL_VERSIONS or not isinstance(
            meta.get(CLIENT_CAPABILITIES_META_KEY), dict
        ):
            return None
        assert isinstance(version, str)
        return version

    def _forwards(self, exposed: Exposed, version: str) -> bool:
        view, upstream, tool = self.tools.view, exposed.upstream, exposed.tool.name
        return (
            self.tools.gate is not None
            and view.raw_version(upstream) == version
            and view.live(upstream, tool)
            and view.passes(upstream, tool)
            # An installed tracer provider expects the SDK's span for every call.
            and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        )

    async def _pass(
        self, request_id: RequestId, exposed: Exposed, arguments: dict[str, Any], version: str
    ) -> bytes | None:
        with anyio.CancelScope() as scope:
            self.calls[request_id] = scope
            try:
                result = await self.tools.pass_through(
                    exposed, arguments, self.principal, partial(self._forward, exposed, arguments)
                )
            except ToolError as error:
                result = _error(f"Error executing tool {exposed.name}: {error}")
            except Exception:
                logger.exception("the passed call %s failed", exposed.name)
                result = _error(f"Error executing tool {exposed.name}")
            finally:
                del self.calls[request_id]
        if scope.cancelled_caught:
            return None  # cancelled by the client, which then expects no answer
        return self._answer(request_id, result, version)

    async def _forward(
        self, exposed: Exposed, arguments: dict[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        try:
            result = await self.tools.view.call_raw(exposed.upstream, exposed.tool.name, arguments)
        except Exception as error:
            return not_answered(exposed, error), failed(error)
        return result, "answered with an error" if result.get("isError") is True else None

    def _answer(self, request_id: RequestId, result: dict[str, Any], version: str) -> bytes:
        answer = {"jsonrpc": "2.0", "id": request_id, "result": as_served(result, version, self.server_info)}
        return json.dumps(answer, separators=(",", ":")).encode() + b"\n"

    def _cancel(self, line: bytes) -> Awaitable[None] | None:
        """A `notifications/cancelled` naming one of this lane's calls is taken (its call stops, and no
        answer is written); any other goes to the SDK."""
        message = _parsed(line)
        params = message.get("params") if message is not None else None
        request_id = params.get("requestId") if isinstance(params, dict) else None
        scope = self.calls.get(request_id) if _is_id(request_id) else None
        if scope is None:
            return None
        scope.cancel()
        return _nothing()


async def _nothing() -> None:
    return None


def _parsed(line: bytes) -> dict[str, Any] | None:
    """The line as JSON when the lane may read it; None leaves it to the SDK's parser, which refuses what
    this one would accept and it would not (NaN, Infinity) and says so in its own words."""
    try:
        message = protocol_line(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _is_id(value: object) -> TypeGuard[RequestId]:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}

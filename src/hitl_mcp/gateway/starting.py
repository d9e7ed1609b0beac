"""What a client meets while an upstream is still starting: listings that wait for it a short while, and
calls of its tools that wait too and then say it is starting, instead of `Unknown tool`.

`[gateway] start_wait_seconds` (default `STARTING_WAIT_SECONDS`) bounds both: a local stdio server
(Python, Node, a cached `npx` package) is ready in a few seconds, so a one-shot client's first
`tools/list` sees its tools; one that takes longer costs a listing no more than this, far inside the 60 s
clients give a request. Only an upstream on its first start holds a listing up: one that failed later
must not slow every listing while it is retried.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp_types import CallToolResult, TextContent

from hitl_mcp.upstream.rules import SEPARATOR
from hitl_mcp.upstream.settings import START_WAIT_SECONDS
from hitl_mcp.upstream.state import Status
from hitl_mcp.upstream.supervisor import Upstreams

STARTING_WAIT_SECONDS = START_WAIT_SECONDS


class Synced(Protocol):
    def registered(self, name: str) -> bool:
        """Whether hitl offers a tool of that name now."""

    def caught_up(self) -> bool:
        """Whether hitl's tools are in step with the upstreams' latest state."""

    async def until(self, done: Callable[[], bool], timeout: float) -> None:
        """Return once `done()` holds and the tools are caught up, or after `timeout` seconds."""


def starting_middleware(
    upstreams: Upstreams, synced: Synced, wait: float = STARTING_WAIT_SECONDS
) -> ServerMiddleware[Any]:
    names = [state.name for state in upstreams.states()]

    def any_first_start() -> bool:
        return any(upstreams.first_start(name) for name in names)

    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/list" and (any_first_start() or not synced.caught_up()):
            await synced.until(lambda: not any_first_start(), wait)
        elif ctx.method == "tools/call" and ctx.params:
            name = ctx.params.get("name")
            upstream = _upstream_of(name, names)
            if isinstance(name, str) and upstream is not None and not synced.registered(name):
                await synced.until(lambda: not _starting(upstreams, upstream), wait)
                if not synced.registered(name):
                    refusal = _not_yet(upstreams, upstream, name)
                    if refusal is not None:
                        return CallToolResult(is_error=True, content=[TextContent(type="text", text=refusal)])
        return await call_next(ctx)

    return middleware


def _upstream_of(name: object, names: list[str]) -> str | None:
    if not isinstance(name, str) or SEPARATOR not in name:
        return None
    upstream = name.split(SEPARATOR, 1)[0]
    return upstream if upstream in names else None


def _starting(upstreams: Upstreams, upstream: str) -> bool:
    return upstreams.state(upstream).status in (Status.STOPPED, Status.STARTING)


def _not_yet(upstreams: Upstreams, upstream: str, name: str) -> str | None:
    """Why `name` cannot be called yet and when to try again; None when its upstream is ready (then the
    tool is simply not one it offers, which the usual answer says)."""
    state = upstreams.state(upstream)
    if state.status in (Status.STOPPED, Status.STARTING):
        limit = upstreams.settings(upstream).start_timeout_seconds
        return (
            f"{name}: upstream {upstream} is starting and its tools are not listed yet; retry in a few "
            f"seconds (it has up to {limit:g} s to start). Nothing was done."
        )
    if state.status is Status.FAILED:
        when = ""
        if state.retry_at is not None:
            seconds = max(0.0, (state.retry_at - datetime.now(UTC)).total_seconds())
            when = f"; hitl starts it again in {seconds:.0f} s, retry after that"
        reason = f" ({state.reason})" if state.reason else ""
        return f"{name}: upstream {upstream} is not running{reason}{when}. Nothing was done."
    return None

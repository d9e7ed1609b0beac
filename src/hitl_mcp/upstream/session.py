"""One live session to an upstream: connect, list its tools, follow their changes, call them.

`open_session` is an async context manager: it yields a `Session` once the upstream has answered the
handshake and listed its tools (within `start_timeout_seconds`), and closes it — stopping the process of
a stdio upstream — on exit. A session ends by itself when the upstream goes away; `Session.lost` is then
set, with the reason, and the supervisor starts another.

Tool changes are followed both ways the protocol has: a `notifications/tools/list_changed` on the older
protocol (what the TypeScript SDK's servers send), a `subscriptions/listen` stream on 2026-07-28
connections, where servers send change notifications only there. An HTTP upstream is also re-listed every
`HTTP_CHECK_SECONDS`, which is how a server that went away without a word is noticed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter, ValidationError

from hitl_mcp import __version__
from hitl_mcp.upstream.delivery import (
    Delivery,
    LostAfterSend,
    NotSent,
    Stage,
    current_delivery,
)
from hitl_mcp.upstream.http import HttpTransport
from hitl_mcp.upstream.reasons import describe, describe_failure, describe_transport
from hitl_mcp.upstream.settings import UpstreamSettings
from hitl_mcp.upstream.stdio import Log, StdioTransport

HTTP_CHECK_SECONDS = 30.0
EXIT_STATUS_SECONDS = 1.0
"""How long a child that closed its stdout has to exit before the reason says only that."""
MAX_TOOL_PAGES = 100
CLIENT_INFO = types.Implementation(name="hitl-mcp", version=__version__)
# Error codes the SDK's HTTP transport also makes up itself (a stream that ended, a body it could not
# parse, a 202): on HTTP such an error may not be the upstream's answer, so its outcome is unknown.
HTTP_TRANSPORT_CODES = frozenset(
    {types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT, types.PARSE_ERROR, types.INVALID_REQUEST}
)
INPUT_ASKED = (
    "{upstream}'s {tool} asked for input (elicitation or sampling), which hitl cannot give; "
    "it did not complete"
)
_CALL_RESULT: TypeAdapter[types.CallToolResult | types.InputRequiredResult] = TypeAdapter(
    types.CallToolResult | types.InputRequiredResult
)


class SessionFailed(Exception):
    """The session could not be opened, or failed; the message says why in a person's words."""


class Session:
    def __init__(self, upstream: UpstreamSettings, client: Client, transport: StdioTransport | HttpTransport):
        self.upstream = upstream
        self.client = client
        self.transport = transport
        self.tools: tuple[types.Tool, ...] = ()
        self.lost = anyio.Event()
        self.lost_reason = ""
        self.changed = anyio.Event()
        self.on_listed: Callable[[Session], None] = lambda session: None

    @property
    def server(self) -> str | None:
        info = self.client.server_info
        return f"{info.name} {info.version}".strip() if info else None

    @property
    def protocol_version(self) -> str:
        return self.client.protocol_version

    @property
    def alive(self) -> bool:
        """Whether calls can be sent: not lost, and (stdio) its process has not closed its pipes, which is
        known a moment before its exit status is."""
        ended = isinstance(self.transport, StdioTransport) and self.transport.ended.is_set()
        return not self.lost.is_set() and not ended

    def end(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def refresh(self) -> None:
        """List the upstream's tools again, within its start timeout."""
        with anyio.fail_after(self.upstream.start_timeout_seconds):
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(MAX_TOOL_PAGES):
                page = await self.client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
        if tuple(tools) != self.tools:  # a periodic re-listing that finds nothing new changes nothing
            self.tools = tuple(tools)
            self.on_listed(self)

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> types.CallToolResult:
        """Call `tool` once, within `timeout` seconds, writing the request included. The upstream's answer
        is returned, an error answer as an `isError` result; `NotSent` when the request certainly never
        left, `LostAfterSend` when it may have."""
        delivery = Delivery()
        self.transport.open_calls.add(delivery)
        reset = current_delivery.set(delivery)
        try:
            with anyio.move_on_after(timeout):
                try:
                    answer = await self.client.session.send_request(
                        types.CallToolRequest(
                            params=types.CallToolRequestParams(name=tool, arguments=arguments)
                        ),
                        _CALL_RESULT,
                    )
                except MCPError as error:
                    return await self._judge(error, delivery, tool)
                except ValidationError as error:
                    problem = error.errors(include_url=False)[0]["msg"]
                    return _error_result(
                        f"{self.upstream.name} answered {tool} with no valid result: {problem}"
                    )
                except Exception as error:  # the session broke under the call
                    raise self._lost_or_not_sent(delivery, tool, describe(error)) from None
                if isinstance(answer, types.InputRequiredResult):
                    return _error_result(INPUT_ASKED.format(upstream=self.upstream.name, tool=tool))
                return answer
            raise self._lost_or_not_sent(delivery, tool, f"no answer within {timeout:g} s")
        finally:
            current_delivery.reset(reset)

    @property
    def answers_raw(self) -> str | None:
        """The protocol version `call_raw` answers in: a stdio session's, while alive; else None."""
        if isinstance(self.transport, StdioTransport) and self.alive:
            return self.protocol_version
        return None

    async def call_raw(self, tool: str, arguments: dict[str, Any], timeout: float) -> dict[str, Any]:
        """As `call`, past the SDK's session (stdio only, see `answers_raw`): the request written as the SDK
        writes it, and the upstream's result returned as it came, once checked to be a tool's result. An
        answer `call` would turn into an `isError` result comes as one here too, in its wire form."""
        transport = self.transport
        assert isinstance(transport, StdioTransport)
        delivery = Delivery()
        transport.open_calls.add(delivery)
        request = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        try:
            with anyio.move_on_after(timeout):
                try:
                    answer = await transport.exchange(request, delivery)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    raise self._lost_or_not_sent(delivery, tool, "its session is closing") from None
                if answer is None:
                    await transport.wait_exited(EXIT_STATUS_SECONDS)  # how it ended says more than "closed"
                    reason = self.lost_reason or describe_transport(transport)
                    raise self._lost_or_not_sent(delivery, tool, reason)
                return self._raw_result(answer, tool)
        except anyio.get_cancelled_exc_class():
            await _abandon(transport, delivery, "the caller cancelled it")
            raise
        await _abandon(transport, delivery, f"no answer within {timeout:g} s")
        raise self._lost_or_not_sent(delivery, tool, f"no answer within {timeout:g} s")

    def _raw_result(self, answer: dict[str, Any], tool: str) -> dict[str, Any]:
        error = answer.get("error")
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            return _wire(_error_result(f"{self.upstream.name} answered {tool} with error {code}: {message}"))
        result = answer.get("result")
        if isinstance(result, dict) and result.get("resultType") == "input_required":
            return _wire(_error_result(INPUT_ASKED.format(upstream=self.upstream.name, tool=tool)))
        try:
            types.CallToolResult.model_validate(result, by_name=False)
        except ValidationError as invalid:
            problem = invalid.errors(include_url=False)[0]["msg"]
            return _wire(
                _error_result(f"{self.upstream.name} answered {tool} with no valid result: {problem}")
            )
        assert isinstance(result, dict)
        return result

    async def _judge(self, error: MCPError, delivery: Delivery, tool: str) -> types.CallToolResult:
        status = delivery.http_status
        # Over HTTP the server's own error answer may come with any status (a 2026-07-28 server answers a
        # tool's JSON-RPC error with 400), so its body tells; a 2xx answer is the server's unless its code
        # is one the transport also makes up.
        made_up = error.code in HTTP_TRANSPORT_CODES
        if delivery.answer is None and status is not None and status < 300 and not made_up:
            delivery.answer = (error.code, error.message)
        if delivery.answer is not None:
            code, message = delivery.answer  # the upstream's own, whatever ended the call since
            return _error_result(f"{self.upstream.name} answered {tool} with error {code}: {message}")
        if status is not None and 300 <= status < 500:
            # Refused as an HTTP request, with no JSON-RPC answer: an unknown session, authentication, a
            # redirect not followed. Nothing reached a tool.
            if status == 404:
                self.end("it no longer knows hitl's session (HTTP 404)")
            raise NotSent(f"{self.upstream.name} refused the request with HTTP {status}; {tool} was not run")
        reason = self.lost_reason or f"the connection failed ({error.message})"
        if isinstance(self.transport, StdioTransport) and self.transport.ended.is_set():
            await self.transport.wait_exited(EXIT_STATUS_SECONDS)  # how it ended says more than "closed"
            reason = self.lost_reason or describe_transport(self.transport)
        raise self._lost_or_not_sent(delivery, tool, reason)

    def _lost_or_not_sent(self, delivery: Delivery, tool: str, why: str) -> Exception:
        if delivery.withdraw():
            return NotSent(f"{self.upstream.name}: {why}; {tool} was not sent")
        return LostAfterSend(f"{self.upstream.name}: {why}, after {tool} was sent; whether it ran is unknown")

    async def _follow_changes(self) -> None:
        while True:
            await self.changed.wait()
            self.changed = anyio.Event()
            try:
                await self.refresh()
            except Exception as error:
                self._fail(f"listing its tools again failed: {describe(error)}")
                return

    async def _listen(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with self.client.listen(tools_list_changed=True) as subscription:
                task_status.started()
                started = True
                async for _change in subscription:
                    self.changed.set()
            self._fail("it closed its subscription to tool changes")
        except Exception as error:
            if not started:
                task_status.started()  # it offers no changes after all: listed once, and re-listed on checks
                return
            self._fail(f"its subscription to tool changes was lost: {describe(error)}")

    def _fail(self, reason: str) -> None:
        # A stdio upstream whose process ended takes its subscription and listings with it; how the
        # process ended is the reason to give, and the process watch gives it.
        if isinstance(self.transport, StdioTransport) and self.transport.ended.is_set():
            return
        self.end(reason)

    async def _check_periodically(self) -> None:
        while True:
            await anyio.sleep(HTTP_CHECK_SECONDS)
            self.changed.set()

    async def _watch_process(self, transport: StdioTransport) -> None:
        await transport.ended.wait()
        await transport.wait_exited(EXIT_STATUS_SECONDS)
        self.end(transport.exit_reason())


@asynccontextmanager
async def open_session(
    upstream: UpstreamSettings, *, log: Log, start_timeout: float | None = None
) -> AsyncIterator[Session]:
    """A live session to `upstream`, its tools listed. Raises `SessionFailed` with the reason."""
    timeout = upstream.start_timeout_seconds if start_timeout is None else start_timeout
    transport: StdioTransport | HttpTransport = (
        StdioTransport(upstream, log) if upstream.kind == "stdio" else HttpTransport(upstream)
    )
    holder: list[Session] = []

    async def on_message(message: types.ServerNotification | Exception) -> None:
        if isinstance(message, types.ToolListChangedNotification) and holder:
            holder[0].changed.set()

    client = Client(transport, cache=None, message_handler=on_message, client_info=CLIENT_INFO)
    # One scope for the session's whole life, its deadline lifted once ready: a cancel scope around the
    # start alone would have to close before the client's task groups do, which anyio forbids.
    with anyio.CancelScope(deadline=anyio.current_time() + timeout) as starting:
        try:
            async with client, anyio.create_task_group() as tasks:
                session = Session(upstream, client, transport)
                holder.append(session)
                capabilities = client.server_capabilities.tools
                if (
                    client.protocol_version in MODERN_PROTOCOL_VERSIONS
                    and capabilities
                    and capabilities.list_changed
                ):
                    await tasks.start(session._listen)  # subscribed before listing: no change is missed
                await session.refresh()
                starting.deadline = math.inf
                if isinstance(transport, StdioTransport):
                    transport.ready_at = anyio.current_time()
                tasks.start_soon(session._follow_changes)
                if isinstance(transport, StdioTransport):
                    tasks.start_soon(session._watch_process, transport)
                else:
                    tasks.start_soon(session._check_periodically)
                try:
                    yield session
                finally:
                    tasks.cancel_scope.cancel()
        except SessionFailed:
            raise
        except Exception as error:
            raise SessionFailed(describe_failure(error, transport)) from error
    if starting.cancelled_caught:
        detail = describe_transport(transport)
        raise SessionFailed(f"not ready within {timeout:g} s" + (f" ({detail})" if detail else ""))


def _error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(is_error=True, content=[types.TextContent(type="text", text=text)])


async def _abandon(transport: StdioTransport, delivery: Delivery, reason: str) -> None:
    """As the SDK's session does for a call it gives up on: a request that went out is cancelled, so the
    upstream may stop working on it."""
    if delivery.stage is Stage.SENDING:
        cancel = {"requestId": delivery.request_id, "reason": reason}
        with anyio.CancelScope(shield=True):
            await transport.notify({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel})


def _wire(result: types.CallToolResult) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)

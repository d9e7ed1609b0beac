"""The tasks extension of MCP 2026-07-28 (`io.modelcontextprotocol/tasks`) on the SDK's public extension
API: a gated call that leaves its request waiting answers with a task, which `tasks/get` reports and
`tasks/cancel` withdraws; `subscriptions/listen` with `taskIds` hears `notifications/tasks`.

Only a client that declared the extension on the call gets a task; every other keeps the request-id
answer. What a task is, and who may see it, is `core`'s: this module speaks the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Extension, MethodBinding, require_client_extension
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    ResourceUpdated,
    ServerEvent,
    event_matches,
    event_to_notification,
)
from mcp_types import (
    CallToolRequestParams,
    InputRequiredResult,
    Notification,
    NotificationParams,
    RequestParams,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
    SubscriptionsListenResult,
)
from mcp_types.jsonrpc import HEADER_MISMATCH, INVALID_PARAMS
from pydantic import ConfigDict, Field

from hitl_mcp.gate import Filing, Gate
from hitl_mcp.live import request_uri
from hitl_mcp.models import Status
from hitl_mcp.tasks import core

IDENTIFIER = "io.modelcontextprotocol/tasks"
# A listen stream whose client stopped reading is ended at this backlog, as the SDK's own streams are.
MAX_BUFFERED_EVENTS = 1024
UNDECIDED = (Status.PENDING, Status.APPROVED, Status.EXECUTING)

GateOf = Callable[[ServerRequestContext[Any, Any]], Gate]
PrincipalOf = Callable[[ServerRequestContext[Any, Any]], str | None]


@dataclass
class _Filed:
    """Where a gated call leaves what it filed, for the interceptor around it to read."""

    filing: Filing | None = None


_filed: ContextVar[_Filed | None] = ContextVar("hitl_task_filed", default=None)


def noted(filing: Filing) -> Filing:
    """Tell the interceptor around this call (if any) which request the call answers with."""
    slot = _filed.get()
    if slot is not None:
        slot.filing = filing
    return filing


class TaskParams(RequestParams):
    task_id: str = Field(alias="taskId", min_length=1, max_length=64)


class TaskNotificationParams(NotificationParams):
    model_config = ConfigDict(extra="allow")


class TaskNotification(Notification[TaskNotificationParams, Literal["notifications/tasks"]]):
    method: Literal["notifications/tasks"] = "notifications/tasks"
    params: TaskNotificationParams


def declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether the client listed the extension among its capabilities on this request."""
    capabilities = ctx.session.client_capabilities
    extensions = capabilities.extensions if capabilities is not None else None
    return bool(extensions) and IDENTIFIER in extensions  # type: ignore[operator]


def wire(task: core.TaskView) -> dict[str, Any]:
    """A task as the extension's `DetailedTask`: the result only once completed."""
    shown: dict[str, Any] = {
        "taskId": task.task_id,
        "status": task.status,
        "statusMessage": task.status_message,
        "createdAt": task.created_at.isoformat(),
        "lastUpdatedAt": task.last_updated_at.isoformat(),
        "ttlMs": task.ttl_ms,
        "pollIntervalMs": task.poll_interval_ms,
    }
    if task.status == "completed" and task.result is not None:
        shown["result"] = task.result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return shown


class TasksExtension(Extension):
    """Tasks for gated calls; `gate_of` and `principal_of` say which gate serves a request and who asks."""

    identifier = IDENTIFIER

    def __init__(self, gate_of: GateOf, principal_of: PrincipalOf, bus: SubscriptionBus) -> None:
        self.gate_of = gate_of
        self.principal_of = principal_of
        self.bus = bus

    def methods(self) -> Sequence[MethodBinding]:
        return (
            MethodBinding(method="tasks/get", params_type=TaskParams, handler=self.get),
            MethodBinding(method="tasks/cancel", params_type=TaskParams, handler=self.cancel),
        )

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if not declared(ctx):
            return await call_next(ctx)
        slot = _Filed()
        token = _filed.set(slot)
        try:
            result = await call_next(ctx)
        finally:
            _filed.reset(token)
        filing = slot.filing
        # Only a request still waiting becomes a task; one that ran (or was refused) in the call answers
        # as it always has, and so does a question to the person at the client.
        if filing is None or isinstance(result, InputRequiredResult):
            return result
        if filing.request.status not in UNDECIDED:
            return result
        # The request is already committed (filed in its own transaction), so tasks/get resolves at once.
        return {"resultType": "task", **wire(core.task_of(filing.request))}

    async def get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        task = await core.view(*self._asked(ctx, params, "retrieve"))
        if task is None:
            raise _unknown("retrieve")
        return {"resultType": "complete", **wire(task)}

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        task = await core.cancel(*self._asked(ctx, params, "cancel"))
        if task is None:
            raise _unknown("cancel")
        # An empty acknowledgement, as the extension asks; the status (and its message) say what happened.
        return {"resultType": "complete"}

    def _asked(
        self, ctx: ServerRequestContext[Any, Any], params: TaskParams, what: str
    ) -> tuple[Gate, str, str]:
        """The gate, the caller and the task id of a tasks/* request, once the request may be served."""
        require_client_extension(ctx, IDENTIFIER)
        _check_name_header(ctx, params.task_id)
        principal = self.principal_of(ctx)
        if principal is None:
            raise _unknown(what)
        return self.gate_of(ctx), principal, params.task_id

    async def listen(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware: a `subscriptions/listen` naming `taskIds` is served here, with the SDK's
        other event kinds on the same stream; any other listen goes on to the SDK's own handler."""
        if ctx.method != "subscriptions/listen" or not isinstance(ctx.params, dict):
            return await call_next(ctx)
        asked = ctx.params.get("notifications")
        if not isinstance(asked, dict) or "taskIds" not in asked:
            return await call_next(ctx)
        require_client_extension(ctx, IDENTIFIER)
        wanted = asked.get("taskIds")
        if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
            raise MCPError(INVALID_PARAMS, "notifications.taskIds: must be a list of task ids")
        return await _TaskStream(self, ctx, SubscriptionFilter.model_validate(asked), wanted).serve()


class _TaskStream:
    """One listen stream that carries `notifications/tasks` for the caller's own tasks among `wanted`."""

    def __init__(
        self,
        extension: TasksExtension,
        ctx: ServerRequestContext[Any, Any],
        asked: SubscriptionFilter,
        wanted: list[str],
    ) -> None:
        self.extension = extension
        self.ctx = ctx
        self.asked = asked
        self.wanted = wanted

    async def serve(self) -> SubscriptionsListenResult:
        ctx = self.ctx
        if ctx.request_id is None:
            raise MCPError(INVALID_PARAMS, "subscriptions/listen requires a request id")
        gate = self.extension.gate_of(ctx)
        principal = self.extension.principal_of(ctx)
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        send, received = anyio.create_memory_object_stream[ServerEvent](MAX_BUFFERED_EVENTS)

        def deliver(event: ServerEvent) -> None:
            try:
                send.send_nowait(event)
            except (anyio.WouldBlock, anyio.ClosedResourceError):
                send.close()  # a client that stopped reading re-listens and refetches

        # Subscribed before the tasks are read: a change landing meanwhile is heard, not lost.
        unsubscribe = self.extension.bus.subscribe(deliver)
        try:
            last: dict[str, core.TaskView] = {}
            for task_id in dict.fromkeys(self.wanted):
                task = await core.view(gate, principal, task_id) if principal is not None else None
                if task is not None:  # another's task, or none: not honoured, exactly alike
                    last[task_id] = task
            honored = self._honored(list(last))
            uris = frozenset(honored.resource_subscriptions or ())
            await ctx.session.send_notification(
                SubscriptionsAcknowledgedNotification(
                    params=SubscriptionsAcknowledgedNotificationParams(notifications=honored, _meta=meta)
                ),
                related_request_id=ctx.request_id,
            )
            # Each task's state now, so the listener needs no tasks/get to learn what it missed before.
            for task in last.values():
                await self._tell(task, meta)
            watched = {request_uri(task_id): task_id for task_id in last}
            async for event in received:
                if event_matches(honored, uris, event):
                    await ctx.session.send_notification(
                        event_to_notification(event, meta), related_request_id=ctx.request_id
                    )
                if isinstance(event, ResourceUpdated) and event.uri in watched and principal is not None:
                    task_id = watched[event.uri]
                    task = await core.view(gate, principal, task_id)
                    if task is None or task == last[task_id]:
                        continue
                    last[task_id] = task
                    await self._tell(task, meta)
        finally:
            unsubscribe()
            send.close()
            received.close()
        return SubscriptionsListenResult(_meta=meta)

    async def _tell(self, task: core.TaskView, meta: dict[str, Any]) -> None:
        params = TaskNotificationParams.model_validate({**wire(task), "_meta": meta})
        # The session's type names the spec's notifications only; it sends any notification model by its
        # dump, and an extension's has no place in that union.
        await self.ctx.session.send_notification(
            TaskNotification(params=params),  # type: ignore[arg-type]
            related_request_id=self.ctx.request_id,
        )

    def _honored(self, task_ids: list[str]) -> SubscriptionFilter:
        """What the stream will carry, for the acknowledgement: the SDK's kinds as asked, and the tasks."""
        asked = self.asked
        honored = SubscriptionFilter(
            tools_list_changed=True if asked.tools_list_changed else None,
            prompts_list_changed=True if asked.prompts_list_changed else None,
            resources_list_changed=True if asked.resources_list_changed else None,
            resource_subscriptions=list(asked.resource_subscriptions or ()) or None,
        )
        return honored.model_copy(update={"taskIds": task_ids})


def _check_name_header(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """Over streamable HTTP, the `Mcp-Name` header carries the task id (intermediaries route by it), and
    it must be the body's: a request that disagrees with itself is refused, not guessed at."""
    headers = getattr(ctx.request, "headers", None)
    if headers is None:
        return  # stdio, in-memory: no headers to agree with
    if decode_header_value(headers.get(MCP_NAME_HEADER)) != task_id:
        raise MCPError(HEADER_MISMATCH, f"{MCP_NAME_HEADER} header does not match the request's taskId")


def _unknown(what: str) -> MCPError:
    # One answer for an unknown id and for another principal's task: a task's existence never leaks.
    return MCPError(INVALID_PARAMS, f"Failed to {what} task: Task not found")

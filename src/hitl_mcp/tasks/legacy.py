"""Tasks in their 2025-11-25 form (experimental there) for clients of the handshake era.

A gated call carrying `params.task` answers with the task its request is (`tasks.core`: the task id is the
request id, visible to its requester only); `tasks/get`, `tasks/result` (blocking until the task is final),
`tasks/list` (the caller's own) and `tasks/cancel` follow it, and `notifications/tasks/status` tells the
connection that created a task of each change. Clients of 2026-07-28 use the extension (`tasks.extension`);
a call without `params.task` keeps today's request-id answer.

Everything here is rendering and routing: what a task shows, when it ends and what a cancel does are
`tasks.core`'s, on the Gate's rules."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import ResourceUpdated, ServerEvent, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    CancelTaskRequestParams,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    PaginatedRequestParams,
    ServerTasksCapability,
    ServerTasksRequestsCapability,
    TasksCallCapability,
    TasksCancelCapability,
    TasksListCapability,
    TasksToolsCapability,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from hitl_mcp.auth import authenticated_principal
from hitl_mcp.gate import Gate
from hitl_mcp.live import REQUEST_URI
from hitl_mcp.sdk_seams import add_handshake_era_handler, connection_of, declare_handshake_tasks
from hitl_mcp.tasks import core

logger = logging.getLogger(__name__)

RELATED_TASK = "io.modelcontextprotocol/related-task"
TASK_STATUS = "notifications/tasks/status"
CAPABILITY = ServerTasksCapability(
    list=TasksListCapability(),
    cancel=TasksCancelCapability(),
    requests=ServerTasksRequestsCapability(tools=TasksToolsCapability(call=TasksCallCapability())),
)
PAGE = 50
# The tasks a principal's `tasks/list` remembers; older ones still answer `tasks/get` (they are requests).
LISTED_PER_PRINCIPAL = 1000
# `tasks/result` waits in slices this long, so a client that went away stops costing a waiter soon.
RESULT_SLICE_SECONDS = 60.0
_REQUEST_PREFIX = REQUEST_URI.split("{", 1)[0]


def task_json(task: core.TaskView) -> dict[str, Any]:
    """The 2025-11-25 `Task` object."""
    return {
        "taskId": task.task_id,
        "status": task.status,
        "statusMessage": task.status_message,
        "createdAt": task.created_at.isoformat(),
        "lastUpdatedAt": task.last_updated_at.isoformat(),
        "ttl": task.ttl_ms,
        "pollInterval": task.poll_interval_ms,
    }


def _unknown(method: str, task_id: str) -> MCPError:
    # Another principal's task answers exactly like one that never existed: its existence must not leak.
    return MCPError(code=INVALID_PARAMS, message=f"{method}: taskId: no task {task_id!r} of yours")


def _legacy(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS


@dataclass
class _Watch:
    principal: str
    connections: set[Connection] = field(default_factory=set)
    last: tuple[str, str] | None = None


class LegacyTasks:
    """The experimental tasks of 2025-11-25 on one server: its handlers, the tasks each principal created
    (for `tasks/list`), and the connections to tell of each task's changes."""

    def __init__(self, bus: SubscriptionBus) -> None:
        self._bus = bus
        self._listed: dict[str, list[str]] = {}
        self._watched: dict[str, _Watch] = {}
        self._stop_listening: Callable[[], None] | None = None
        self._heard: MemoryObjectSendStream[str]
        self._hearing: MemoryObjectReceiveStream[str]
        self._heard, self._hearing = anyio.create_memory_object_stream[str](math.inf)

    def install(self, app: MCPServer[Any]) -> None:
        declare_handshake_tasks(app, CAPABILITY)
        add_handshake_era_handler(app, "tasks/get", GetTaskRequestParams, self.get)
        add_handshake_era_handler(app, "tasks/result", GetTaskPayloadRequestParams, self.result)
        add_handshake_era_handler(app, "tasks/list", PaginatedRequestParams, self.list)
        add_handshake_era_handler(app, "tasks/cancel", CancelTaskRequestParams, self.cancel)
        app.middleware.append(self.middleware())

    # -- the call that creates a task, and the tool listing that offers it ---------------------------

    def middleware(self) -> ServerMiddleware[Any]:
        async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
            if not _legacy(ctx) or ctx.method not in ("tools/call", "tools/list"):
                return await call_next(ctx)
            gate: Gate = ctx.lifespan_context.gate
            if ctx.method == "tools/list":
                result = await call_next(ctx)
                if isinstance(result, dict):
                    for tool in result.get("tools", ()):
                        # Gated tools only: a companion answers at once, so a task would add nothing.
                        if isinstance(tool, dict) and tool.get("name") in gate.actions:
                            tool["execution"] = {"taskSupport": "optional"}
                return result
            params = dict(ctx.params or {})
            if "task" not in params:
                return await call_next(ctx)
            if params.get("name") not in gate.actions:
                # The spec's answer to a task asked of a tool that does not offer one (taskSupport absent).
                raise MCPError(
                    code=METHOD_NOT_FOUND,
                    message=f"tools/call: task: {params.get('name')!r} offers no task (gated tools do); "
                    "call it without params.task",
                )
            del params["task"]  # the call itself files and answers as always; the task is its request
            answer = await call_next(_with_params(ctx, params))
            return await self._created(ctx, gate, answer)

        return middleware

    async def _created(
        self, ctx: ServerRequestContext[Any, Any], gate: Gate, answer: HandlerResult
    ) -> dict[str, Any]:
        """The task a gated call's answer names, once its request is stored; a refusal (bad arguments, a
        policy's deny) stays an error, since no task was created."""
        if isinstance(answer, BaseModel):  # a middleware's own answer (unknown arguments), not yet wire form
            answer = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
        answer = answer if isinstance(answer, dict) else {}
        filed = answer.get("structuredContent")
        if answer.get("isError") or not isinstance(filed, dict) or "request_id" not in filed:
            text = " ".join(
                block.get("text", "") for block in answer.get("content", ()) if isinstance(block, dict)
            )
            raise MCPError(code=INVALID_PARAMS, message=text or "the call was refused; no task was created")
        principal = _principal(ctx)
        task = await core.view(gate, principal, str(filed["request_id"]))
        if task is None:  # filed by this very call: only a store that lost it gets here
            raise MCPError(code=INVALID_PARAMS, message="the call's request is gone; no task was created")
        listed = self._listed.setdefault(principal.casefold(), [])
        if task.task_id not in listed:
            listed.append(task.task_id)
            del listed[:-LISTED_PER_PRINCIPAL]
        self._watch(task, principal, connection_of(ctx.session))
        return {"task": task_json(task)}

    # -- tasks/* ------------------------------------------------------------------------------------

    async def get(self, ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> dict[str, Any]:
        task = await core.view(ctx.lifespan_context.gate, _principal(ctx), params.task_id)
        if task is None:
            raise _unknown("tasks/get", params.task_id)
        return task_json(task)

    async def result(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams
    ) -> dict[str, Any]:
        """The call's final result, once the task is final: blocks while it works (a request that expires
        ends it), as the spec asks."""
        gate, principal = ctx.lifespan_context.gate, _principal(ctx)
        task = await core.view(gate, principal, params.task_id)
        while task is not None and task.result is None:
            task = await core.changed(gate, principal, task, RESULT_SLICE_SECONDS)
        if task is None or task.result is None:
            raise _unknown("tasks/result", params.task_id)
        result = task.result.model_dump(by_alias=True, mode="json", exclude_none=True)
        result["_meta"] = {**result.get("_meta", {}), RELATED_TASK: {"taskId": task.task_id}}
        return result

    async def list(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams
    ) -> dict[str, Any]:
        """The caller's own tasks, newest first; another principal's are never listed."""
        gate, principal = ctx.lifespan_context.gate, _principal(ctx)
        newest_first = list(reversed(self._listed.get(principal.casefold(), [])))
        cursor = params.cursor or "0"
        if not cursor.isdigit() or int(cursor) > len(newest_first):
            raise MCPError(code=INVALID_PARAMS, message="tasks/list: cursor: not one this server returned")
        start = int(cursor)
        tasks = []
        for task_id in newest_first[start : start + PAGE]:
            task = await core.view(gate, principal, task_id)
            if task is not None:
                tasks.append(task_json(task))
        page: dict[str, Any] = {"tasks": tasks}
        if start + PAGE < len(newest_first):
            page["nextCursor"] = str(start + PAGE)
        return page

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams
    ) -> dict[str, Any]:
        """Withdraw the task's request while it is pending. A final task cannot be cancelled (the spec's
        -32602); one whose execution has begun stays `working`, its message saying it was not cancelled."""
        gate, principal = ctx.lifespan_context.gate, _principal(ctx)
        task = await core.view(gate, principal, params.task_id)
        if task is not None and task.status != "working":
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"tasks/cancel: taskId: {params.task_id} is already {task.status}; nothing changed",
            )
        task = await core.cancel(gate, principal, params.task_id) if task is not None else None
        if task is None:
            raise _unknown("tasks/cancel", params.task_id)
        return task_json(task)

    # -- notifications/tasks/status ---------------------------------------------------------------

    def _watch(self, task: core.TaskView, principal: str, connection: Connection) -> None:
        if task.result is not None:
            return  # final already: nothing more will change
        watch = self._watched.setdefault(task.task_id, _Watch(principal))
        watch.connections.add(connection)
        watch.last = (task.status, task.status_message)
        if self._stop_listening is None:
            # The change feed reads the store only while someone listens: listen only while tasks are watched.
            self._stop_listening = self._bus.subscribe(self._on_event)

    def _on_event(self, event: ServerEvent) -> None:
        if isinstance(event, ResourceUpdated) and event.uri.startswith(_REQUEST_PREFIX):
            task_id = event.uri[len(_REQUEST_PREFIX) :]
            if task_id in self._watched:
                self._heard.send_nowait(task_id)

    async def run(self, gate: Gate) -> None:
        """Forever: tell each watching connection of its task's new status. Cancel it to stop."""
        async for task_id in self._hearing:
            watch = self._watched.get(task_id)
            if watch is None:
                continue
            try:
                task = await core.view(gate, watch.principal, task_id)
            except Exception:  # a store outage: the next change tells again
                logger.warning("could not read task %s for its status notification", task_id, exc_info=True)
                continue
            if task is None or (task.status, task.status_message) == watch.last:
                continue
            watch.last = (task.status, task.status_message)
            for connection in list(watch.connections):
                try:
                    await connection.notify(TASK_STATUS, task_json(task))
                except Exception:  # the client went away: forget it rather than fail the others
                    watch.connections.discard(connection)
            if task.result is not None or not watch.connections:
                del self._watched[task_id]
            if not self._watched and self._stop_listening is not None:
                self._stop_listening()
                self._stop_listening = None


def _with_params(
    ctx: ServerRequestContext[Any, Any], params: dict[str, Any]
) -> ServerRequestContext[Any, Any]:
    return replace(ctx, params=params)


def _principal(ctx: ServerRequestContext[Any, Any]) -> str:
    """Who is asking: the bearer token's principal, else the server's own (as for a tool call)."""
    principal = authenticated_principal() or ctx.lifespan_context.principal
    if principal is None:
        raise MCPError(code=INVALID_REQUEST, message="this request carries no authenticated principal")
    return str(principal)

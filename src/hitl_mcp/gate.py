"""The request lifecycle: file, decide, claim, execute, expire, cancel — the only writer of a status."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from hitl_mcp.actions import Action, Execution
from hitl_mcp.config import Settings
from hitl_mcp.errors import (
    AmbiguousId,
    Expired,
    HitlError,
    InvalidArguments,
    NotAllowed,
    NotFound,
    NotPending,
)
from hitl_mcp.models import Request, RequestPage, Status
from hitl_mcp.store import NewRequest, Store

logger = logging.getLogger(__name__)

ID_BYTES = 10
ID_PATTERN = re.compile(rf"^[0-9a-f]{{1,{ID_BYTES * 2}}}$")
UNDECIDED = frozenset({Status.PENDING, Status.APPROVED, Status.EXECUTING})
OPEN_STATUSES = (Status.PENDING,)
MAX_PAGE = 200
# Another process's commit is seen through the store's change counter; asking it this often costs
# microseconds and bounds how late a waiter wakes.
CHANGE_POLL_SECONDS = 0.02

ProgressFn = Callable[[float, float], Awaitable[None]]


def new_request_id() -> str:
    return secrets.token_hex(ID_BYTES)


def arguments_digest(tool: str, arguments: Mapping[str, Any]) -> str:
    canonical = json.dumps({"tool": tool, "arguments": arguments}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Gate:
    def __init__(
        self,
        store: Store,
        actions: Mapping[str, Action],  # type: ignore[type-arg]
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.actions = actions
        self.settings = settings
        self.clock = clock
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._changed = anyio.Event()

    # -- filing ----------------------------------------------------------------------------------

    async def file(self, tool: str, arguments: Mapping[str, Any], principal: str) -> Request:
        """Validate, preview and store a pending request. Runs nothing; writes nothing on bad input."""
        action = self._action(tool)
        args = action.parse(arguments)
        preview = await action.preview(args)
        normalised = args.model_dump(mode="json")
        now = self.clock()
        new = NewRequest(
            request_id=new_request_id(),
            tool=tool,
            arguments=normalised,
            arguments_digest=arguments_digest(tool, normalised),
            summary=action.summary(args),
            preview=preview,
            requested_by=principal,
            created_at=now,
            expires_at=now + self.settings.ttl_for(tool),
        )
        await self.store.insert(new)
        self._signal()
        return await self.get(new.request_id)

    # -- deciding --------------------------------------------------------------------------------

    async def approve(self, ref: str, principal: str, reason: str | None = None) -> Request:
        """Record an approval, then claim and run the action at once. Returns the record afterwards."""
        request_id = await self.resolve(ref)
        if not await self.store.decide(request_id, principal, "approve", reason, self.clock()):
            await self._refuse_decision(request_id, principal)
        self._signal()
        return await self.execute(request_id)

    async def reject(self, ref: str, principal: str, reason: str) -> Request:
        request_id = await self.resolve(ref)
        if not reason.strip():
            raise InvalidArguments("reason: a rejection needs a reason")
        if not await self.store.decide(request_id, principal, "reject", reason, self.clock()):
            await self._refuse_decision(request_id, principal)
        self._signal()
        return await self.get(request_id)

    async def cancel(self, ref: str, principal: str) -> Request:
        """The requester withdraws its own pending request."""
        request_id = await self.resolve(ref)
        if not await self.store.cancel(request_id, principal, self.clock()):
            request = await self.get(request_id)
            if request.requested_by != principal:
                raise NotAllowed(
                    f"request {request_id} was filed by {request.requested_by}; only its requester may "
                    "cancel it (an approver rejects instead)"
                )
            raise NotPending(f"request {request_id} is {request.status}, not pending; nothing was changed")
        self._signal()
        return await self.get(request_id)

    async def _refuse_decision(self, request_id: str, principal: str) -> None:
        request = await self.get(request_id)
        if request.status is not Status.PENDING:
            raise NotPending(f"request {request_id} is {request.status}, not pending; nothing was changed")
        if request.requested_by == principal:
            raise NotAllowed(
                f"{principal} filed request {request_id}; a principal may not decide its own request"
            )
        if request.expires_at.timestamp() <= self.clock():
            await self.sweep()
            raise Expired(
                f"request {request_id} expired at {request.expires_at.isoformat()}; it will never run"
            )
        # The row changed between the refused write and this read: report it as not pending.
        raise NotPending(f"request {request_id} changed while deciding; read it again")

    # -- executing -------------------------------------------------------------------------------

    async def execute(self, request_id: str) -> Request:
        """Claim an approved request and run it. Only the one claimer runs it; others just read it."""
        claimed = await self.store.claim(request_id, self.worker, self.clock())
        if claimed is None:
            request = await self.get(request_id)
            if request.status is Status.APPROVED and request.expires_at.timestamp() <= self.clock():
                await self.sweep()
                return await self.get(request_id)
            return request
        self._signal()
        status, result, error = await self._run(claimed)
        await self.store.finish(request_id, status, self.worker, result, error, self.clock())
        self._signal()
        return await self.get(request_id)

    async def _run(self, request: Request) -> tuple[Status, dict[str, Any] | None, str | None]:
        if arguments_digest(request.tool, request.arguments) != request.arguments_digest:
            return Status.FAILED, None, "the stored arguments no longer match what was approved; not run"
        action = self.actions[request.tool]
        try:
            args = action.parse(request.arguments)
            result = await action.execute(args, Execution(request.request_id, request.preview))
        except HitlError as error:
            return Status.FAILED, None, str(error)
        except Exception as error:
            logger.exception("action %s crashed on request %s", request.tool, request.request_id)
            return Status.FAILED, None, f"the action crashed ({type(error).__name__}: {error})"
        return Status.EXECUTED, result, None

    # -- housekeeping ----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Mark every overdue pending or approved request expired."""
        expired = 0
        while batch := await self.store.expire_overdue(self.clock()):
            expired += len(batch)
            self._signal()
        return expired

    async def release_orphans(self) -> int:
        """Run approved requests whose approver died between its decision and its claim."""
        grace = self.settings.gate.orphan_grace_seconds
        released = 0
        for request_id in await self.store.approved_unclaimed(self.clock() - grace):
            request = await self.execute(request_id)
            released += request.status in (Status.EXECUTED, Status.FAILED)
        return released

    async def maintain(self) -> None:
        """Sweep and release orphans forever; run it in a task group and cancel it to stop."""
        while True:
            try:
                await self.sweep()
                await self.release_orphans()
            except Exception:
                logger.exception(
                    "housekeeping failed; trying again in %ss", self.settings.gate.sweep_interval_seconds
                )
            await anyio.sleep(self.settings.gate.sweep_interval_seconds)

    # -- reading ---------------------------------------------------------------------------------

    async def resolve(self, ref: str) -> str:
        """An id from a full id or any unique prefix of one."""
        ref = ref.strip().lower()
        if not ID_PATTERN.match(ref):
            raise NotFound(f"{ref!r} is not a request id (ids are up to {ID_BYTES * 2} hex digits)")
        matches = await self.store.match_prefix(ref, limit=2)
        if not matches:
            raise NotFound(f"no request has id {ref!r}")
        if len(matches) > 1:
            raise AmbiguousId(f"{ref!r} matches more than one request; give more of the id")
        return matches[0]

    async def get(self, ref: str) -> Request:
        request = await self.store.get(ref)
        if request is None:
            request = await self.store.get(await self.resolve(ref))
        if request is None:
            raise NotFound(f"no request has id {ref!r}")
        return request

    async def list(
        self,
        *,
        statuses: tuple[Status, ...] | None = OPEN_STATUSES,
        tool: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RequestPage:
        if tool is not None:
            self._action(tool)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArguments(f"limit: must be between 1 and {MAX_PAGE}")
        if cursor is not None and not cursor.isdigit():
            raise InvalidArguments("cursor: not a cursor this server returned")
        page = await self.store.page(statuses, tool, limit, cursor)
        return RequestPage(requests=page.requests, next_cursor=page.next_cursor)

    async def wait(self, ref: str, timeout: float, progress: ProgressFn | None = None) -> Request:
        """The record as soon as it is decided for good, or as it stands when `timeout` passes."""
        request_id = await self.resolve(ref)
        deadline = time.monotonic() + timeout
        while True:
            request = await self.get(request_id)
            if request.status is Status.PENDING and request.expires_at.timestamp() <= self.clock():
                await self.sweep()
                continue
            remaining = deadline - time.monotonic()
            if request.status not in UNDECIDED or remaining <= 0:
                return request
            if progress is not None:
                await progress(timeout - remaining, timeout)
            await self._wait_for_change(min(remaining, 5.0))

    async def _wait_for_change(self, timeout: float) -> None:
        changed = self._changed
        before = await self.store.change_counter()
        with anyio.move_on_after(timeout):
            while True:
                with anyio.move_on_after(CHANGE_POLL_SECONDS):
                    await changed.wait()
                    return
                if await self.store.change_counter() != before:
                    return

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _action(self, tool: str) -> Action:  # type: ignore[type-arg]
        try:
            return self.actions[tool]
        except KeyError:
            raise InvalidArguments(
                f"tool: no gated action is named {tool!r}; known: {', '.join(sorted(self.actions))}"
            ) from None


@asynccontextmanager
async def open_gate(settings: Settings) -> AsyncIterator[Gate]:
    """A gate over the configured SQLite store, closed on exit."""
    from hitl_mcp.actions import build_actions
    from hitl_mcp.store.sqlite import SQLiteStore

    store = SQLiteStore(settings.db_path, synchronous=settings.gate.synchronous)
    await store.open()
    try:
        yield Gate(store, build_actions(settings.actions), settings)
    finally:
        await store.close()

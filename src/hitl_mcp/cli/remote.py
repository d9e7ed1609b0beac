"""The CLI acting through a server: `HITL_SERVER` and a token (`HITL_TOKEN`, or the one `hitl login`
saved), instead of opening a store.

`RemoteGate` answers the Gate calls the commands make (`get`, `approve`, `list`, …) with the server's REST
API, returning the same models, so each command is written once and prints the same thing either way. The
server decides who is acting (the token's principal): the `principal` the commands pass is ignored here.
A refusal comes back as problem+json naming its kind, and is raised here as the same `HitlError`, so the
exit status is the one the command has on a store.

httpx2 is imported only here, and this module only when HITL_SERVER is set: the CLI stays quick to start.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import anyio
import anyio.abc
import httpx2

from hitl_mcp import errors
from hitl_mcp.audit import START, AuditRecord, Checkpoint
from hitl_mcp.cli import credentials
from hitl_mcp.errors import HitlError, NotAllowed, StoreUnavailable
from hitl_mcp.models import Request, RequestPage, RequestSummary, Status, SummaryPage
from hitl_mcp.store import Denial, DenialPage, SummaryRows
from hitl_mcp.store.archive import CHECKPOINT_HEADER

PREFIX = "/api/v1"
SERVER_URL = re.compile(r"https?://[^/?#\s]+(/[^?#\s]*)?")
# Another process runs an approved action; how often its record is read again while waiting for it.
WAIT_POLL_SECONDS = 0.2
# After the event stream drops (a server restarting), how long before it is opened again.
RECONNECT_SECONDS = 1.0
TIMEOUT = httpx2.Timeout(60.0, connect=10.0)
# Problem kinds the server may name, raised here as themselves; anything else is a plain refusal.
KINDS: Mapping[str, type[HitlError]] = {
    kind.__name__: kind
    for kind in (
        errors.NotFound,
        errors.AmbiguousId,
        errors.NotPending,
        errors.Expired,
        errors.NotAllowed,
        errors.InvalidArguments,
        errors.ConfigError,
        errors.ActionFailed,
        errors.OutcomeUnknown,
        errors.StoreUnavailable,
    )
}
BY_STATUS: Mapping[int, type[HitlError]] = {
    400: errors.InvalidArguments,
    403: errors.NotAllowed,
    404: errors.NotFound,
    409: errors.NotPending,
    503: errors.StoreUnavailable,
}


class NotSignedIn(NotAllowed):
    """No token, or one the server does not accept (wrong, expired, revoked): exit 5, as any refusal of who
    is acting."""


class ServerUnreachable(StoreUnavailable):
    """The server cannot be reached: like a store that cannot be opened, exit 7, and nothing was done."""


def server_url(env: Mapping[str, str]) -> str | None:
    """HITL_SERVER without its trailing slash, or None when the CLI works on a store."""
    url = env.get("HITL_SERVER", "").strip()
    if not url:
        return None
    if not SERVER_URL.fullmatch(url):
        raise errors.ConfigError(f"HITL_SERVER: {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def token_for(server: str, env: Mapping[str, str]) -> str:
    token = env.get("HITL_TOKEN", "").strip() or credentials.saved_token(server)
    if not token:
        raise NotSignedIn(
            f"HITL_SERVER is {server} but there is no token: set HITL_TOKEN (`hitl token new NAME` on the "
            "server's side) or run `hitl login`; nothing was done"
        )
    return token


def problem_error(response: httpx2.Response, server: str) -> HitlError:
    """The refusal a problem+json answer carries, as the `HitlError` the Gate raised on the server."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        return HitlError(
            f"the server at {server} answered {response.status_code} without a reason; nothing was done"
        )
    detail = " ".join(body["detail"].split())
    if response.status_code == 401:
        return NotSignedIn(f"{detail} (HITL_TOKEN, or the credential `hitl login` saved for {server})")
    kind = KINDS.get(str(body.get("hitl_error")))
    if kind is None:
        kind = BY_STATUS.get(response.status_code, HitlError)
    return kind(detail)


class RemoteGate:
    """The Gate calls of the CLI's commands, made through the server's REST API as the token's principal."""

    def __init__(self, http: httpx2.AsyncClient, server: str, principal: str) -> None:
        self.http = http
        self.server = server
        self.principal = principal
        self.audit_checkpoint = START
        """Where the server's trail begins, as the last `audit_records` call was told (an archive's end)."""
        # No request is ever claimed by this process: whatever runs, runs on the server.
        self.worker = ""

    # -- the calls ---------------------------------------------------------------------------------

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        try:
            response = await self.http.request(method, PREFIX + path, **kwargs)
        except httpx2.TransportError as error:
            raise unreachable(self.server, error) from None
        if response.status_code >= 400:
            raise problem_error(response, self.server)
        return response

    async def record(self, method: str, path: str, body: dict[str, Any] | None = None) -> Request:
        response = await self.call(method, path, json=body)
        return Request.model_validate_json(response.content)

    async def get(self, ref: str) -> Request:
        return await self.record("GET", f"/requests/{_ref(ref)}")

    async def approve(
        self, ref: str, principal: str, reason: str | None = None, arguments: Mapping[str, Any] | None = None
    ) -> Request:
        body: dict[str, Any] = {"reason": reason}
        if arguments:
            body["arguments"] = dict(arguments)
        return await self.record("POST", f"/requests/{_ref(ref)}/approve", body)

    async def reject(self, ref: str, principal: str, reason: str) -> Request:
        return await self.record("POST", f"/requests/{_ref(ref)}/reject", {"reason": reason})

    async def cancel(self, ref: str, principal: str) -> Request:
        return await self.record("POST", f"/requests/{_ref(ref)}/cancel")

    async def retry(self, ref: str, principal: str) -> Request:
        return await self.record("POST", f"/requests/{_ref(ref)}/retry")

    async def settle(
        self, ref: str, principal: str, outcome: Literal["executed", "failed"], note: str
    ) -> Request:
        return await self.record("POST", f"/requests/{_ref(ref)}/settle", {"outcome": outcome, "note": note})

    async def wait(self, ref: str, timeout: float) -> Request:
        """The record once the server has run it (or its outcome is unknown), or as it stands at `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            request = await self.get(ref)
            running = request.status in (Status.APPROVED, Status.EXECUTING) and not request.outcome_unknown
            if not running or time.monotonic() >= deadline:
                return request
            await anyio.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def elsewhere(self, request: Request) -> str | None:
        # Which process may run it is the server's to know; it says so in the record.
        return None

    # -- listings ----------------------------------------------------------------------------------

    async def summaries(
        self,
        *,
        statuses: tuple[Status, ...] | None = (Status.PENDING,),
        tool: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SummaryRows:
        page = await self._page(statuses, tool, limit, cursor)
        return SummaryRows(
            lines=[summary.model_dump(mode="json") for summary in page.requests], next_cursor=page.next_cursor
        )

    async def list(
        self,
        *,
        statuses: tuple[Status, ...] | None = (Status.PENDING,),
        tool: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RequestPage:
        page = await self._page(statuses, tool, limit, cursor)
        records = [await self.get(summary.request_id) for summary in page.requests]
        return RequestPage(requests=records, next_cursor=page.next_cursor)

    async def _page(
        self, statuses: tuple[Status, ...] | None, tool: str | None, limit: int, cursor: str | None
    ) -> SummaryPage:
        params = _listing(statuses, tool, cursor)
        params["limit"] = str(limit)
        response = await self.call("GET", "/requests", params=params)
        page = SummaryPage.model_validate_json(response.content)
        return SummaryPage(
            requests=[RequestSummary.model_validate(s) for s in page.requests], next_cursor=page.next_cursor
        )

    async def count(
        self,
        *,
        statuses: tuple[Status, ...] | None = (Status.PENDING,),
        tool: str | None = None,
        cursor: str | None,
    ) -> int:
        response = await self.call("GET", "/requests/count", params=_listing(statuses, tool, cursor))
        return int(response.json()["count"])

    async def denials(
        self, *, tool: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> DenialPage:
        params = _listing(None, tool, cursor)
        del params["status"]
        params["limit"] = str(limit)
        body = (await self.call("GET", "/denials", params=params)).json()
        return DenialPage(
            denials=[
                Denial(**{**item, "at": datetime.fromisoformat(item["at"]).timestamp()})
                for item in body["denials"]
            ],
            next_cursor=body["next_cursor"],
        )

    async def count_denials(self, *, tool: str | None = None, cursor: str | None) -> int:
        params = _listing(None, tool, cursor)
        del params["status"]
        return int((await self.call("GET", "/denials/count", params=params)).json()["count"])

    # -- the audit trail ---------------------------------------------------------------------------

    async def audit_records(
        self, *, since: float | None = None, until: float | None = None, request: str | None = None
    ) -> AsyncIterator[AuditRecord]:
        """The audit trail as the server's store holds it, streamed (`request`: an id or its prefix)."""
        params = {
            name: value
            for name, value in (("since", since), ("until", until), ("request", request))
            if value is not None
        }
        try:
            async with self.http.stream(
                "GET",
                f"{PREFIX}/audit/records",
                params={k: repr(v) if isinstance(v, float) else str(v) for k, v in params.items()},
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise problem_error(response, self.server)
                self.audit_checkpoint = _checkpoint(response.headers.get(CHECKPOINT_HEADER))
                async for line in response.aiter_lines():
                    if line.strip():
                        yield AuditRecord(**json.loads(line))
        except httpx2.TransportError as error:
            raise unreachable(self.server, error) from None

    async def report(self, since: float | None) -> dict[str, Any]:
        params = {} if since is None else {"since": _iso(since)}
        return dict((await self.call("GET", "/report", params=params)).json())


class EventFeed:
    """Changes as the server's event stream tells them (`/api/v1/events`), for `hitl watch`: each event ends
    a `wait`. After a drop it reconnects with Last-Event-ID, so nothing is missed, and counts the drop as a
    change, so the screen is read again."""

    def __init__(self, gate: RemoteGate) -> None:
        self.gate = gate
        self.seen = 0
        self.last_id: str | None = None
        self._changed = anyio.Event()

    @classmethod
    @asynccontextmanager
    async def following(cls, gate: RemoteGate) -> AsyncIterator[EventFeed]:
        feed = cls(gate)
        async with anyio.create_task_group() as tasks:
            await tasks.start(feed._follow)
            try:
                yield feed
            finally:
                tasks.cancel_scope.cancel()

    async def mark(self) -> int:
        return self.seen

    async def wait(self, mark: int, timeout: float, local: anyio.Event) -> None:
        if self.seen != mark:
            return
        changed = self._changed
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tasks:

                async def until(event: anyio.Event) -> None:
                    await event.wait()
                    tasks.cancel_scope.cancel()

                tasks.start_soon(until, changed)
                tasks.start_soon(until, local)

    def _note(self) -> None:
        self.seen += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def _follow(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            headers = {"Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with self.gate.http.stream("GET", f"{PREFIX}/events", headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise problem_error(response, self.gate.server)
                    if not started:
                        started = True
                        task_status.started()
                    await self._read(response)
            except httpx2.TransportError:
                pass
            if not started:
                # The server is gone already: the screen says so on its next read.
                started = True
                task_status.started()
            self._note()
            await anyio.sleep(RECONNECT_SECONDS)

    async def _read(self, response: httpx2.Response) -> None:
        data = False
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                self.last_id = line[3:].strip()
            elif line.startswith("data:"):
                data = True
            elif not line and data:
                data = False
                self._note()


def _ref(ref: str) -> str:
    # A request id or prefix is letters and digits; anything else must not change the path it goes to.
    return quote(ref, safe="")


def _listing(statuses: tuple[Status, ...] | None, tool: str | None, cursor: str | None) -> dict[str, str]:
    params = {"status": "all" if statuses is None else ",".join(s.value for s in statuses)}
    if tool is not None:
        params["tool"] = tool
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _iso(moment: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(moment, UTC).isoformat()


def unreachable(server: str, error: Exception) -> ServerUnreachable:
    reason = " ".join(str(error).split()) or type(error).__name__
    return ServerUnreachable(f"cannot reach the server at {server} ({reason}); nothing was done")


@asynccontextmanager
async def connect(server: str, token: str) -> AsyncIterator[RemoteGate]:
    """A `RemoteGate` on `server` as the token's principal, checked once before any command's call."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with httpx2.AsyncClient(base_url=server, headers=headers, timeout=TIMEOUT) as http:
        gate = RemoteGate(http, server, "")
        me = (await gate.call("GET", "/me")).json()
        gate.principal = str(me["principal"])
        yield gate


def from_environment() -> tuple[str, str] | None:
    """(server, token) when HITL_SERVER is set, else None."""
    server = server_url(os.environ)
    if server is None:
        return None
    return server, token_for(server, os.environ)


def _checkpoint(header: str | None) -> Checkpoint:
    """The checkpoint a server names ("SEQ HASH"); the start of the trail from a server that names none."""
    seq, _, hash_ = (header or "").partition(" ")
    if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", hash_):
        return START
    return Checkpoint(int(seq), hash_)

"""The calls of `/api/v1` that the CLI makes when it acts through a server (`HITL_SERVER`): who the token is,
retry and settle, how many rows a listing has left, denied calls, and the audit trail as stored.

Each is the same Gate call or store read the CLI makes on a store, so `hitl` prints the same thing either
way; the principal is always the bearer token's, never something the client says.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hitl_mcp.errors import AmbiguousId, HitlError, InvalidArguments, NotFound
from hitl_mcp.gate import Gate
from hitl_mcp.models import utc
from hitl_mcp.store import Store
from hitl_mcp.store.archive import CHECKPOINT_HEADER
from hitl_mcp.store.archive import backend as archive_backend
from hitl_mcp.web import queries
from hitl_mcp.web.face import WebFace
from hitl_mcp.web.models import REASON_MAX
from hitl_mcp.web.problems import problem_of

Result = BaseModel
Work = Callable[[HttpRequest, Gate, str], Awaitable[Any]]
Endpoint = Callable[..., Callable[[HttpRequest], Awaitable[Response]]]
NDJSON = "application/x-ndjson"
REQUEST_PREFIX = re.compile(r"[0-9A-Za-z_-]{1,64}")


class Principal(BaseModel):
    """Who the caller's token names."""

    principal: str
    roles: list[str]


class Count(BaseModel):
    count: int


class SettleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["executed", "failed"] = Field(description="What the person found the action did")
    note: str = Field(min_length=1, max_length=REASON_MAX, description="What was checked and found")


class DenialRecord(BaseModel):
    request_id: str
    tool: str
    requested_by: str
    at: datetime = Field(description="When the call was refused")
    policy: str
    arguments_digest: str | None


class DenialList(BaseModel):
    denials: list[DenialRecord]
    next_cursor: str | None = None


def timestamp(params: Mapping[str, str], name: str, now: float) -> float | None:
    """A time as Unix seconds (exact, as the CLI sends it), or as `hitl report --since` takes it."""
    text = params.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return queries.moment(params, name, now)
    if not math.isfinite(value):
        raise InvalidArguments(f"{name}: must be a finite number of seconds")
    return value


async def request_id_of(store: Store, prefix: str) -> str:
    if not REQUEST_PREFIX.fullmatch(prefix):
        # Also keeps GLOB's wildcards out of the store's prefix match.
        raise InvalidArguments("request: must be a request id or the start of one (letters, digits, _ or -)")
    found = await store.audit_request_ids(prefix, limit=2)
    if not found:
        raise NotFound(f"--request: no audit records for a request id starting {prefix!r}")
    if len(found) > 1:
        raise AmbiguousId(f"--request: {prefix!r} starts more than one request id; give more of it")
    return str(found[0])


def remote_routes(face: WebFace, prefix: str, endpoint: Endpoint) -> list[Route]:
    def ref(request: HttpRequest) -> str:
        return str(request.path_params["request_id"])

    async def me(request: HttpRequest, gate: Gate, principal: str) -> Result:
        return Principal(principal=principal, roles=list(gate.roles_of(principal, request.state.roles)))

    async def count(request: HttpRequest, gate: Gate, principal: str) -> Result:
        params = request.query_params
        n = await gate.count(
            statuses=queries.parse_statuses(params.get("status", "pending")),
            tool=params.get("tool"),
            cursor=params.get("cursor"),
        )
        return Count(count=n)

    async def retry(request: HttpRequest, gate: Gate, principal: str) -> Result:
        return await gate.retry(ref(request), principal, roles=request.state.roles)

    async def settle(request: HttpRequest, gate: Gate, principal: str) -> Result:
        from hitl_mcp.web.api import body_of

        body = await body_of(request, SettleBody)
        return await gate.settle(ref(request), principal, body.outcome, body.note)

    async def denials(request: HttpRequest, gate: Gate, principal: str) -> Result:
        params = request.query_params
        limit = params.get("limit", "50")
        if not queries.LIMIT.fullmatch(limit):
            raise InvalidArguments("limit: must be a whole number")
        page = await gate.denials(tool=params.get("tool"), limit=int(limit), cursor=params.get("cursor"))
        return DenialList(
            denials=[DenialRecord(**{**vars(denial), "at": utc(denial.at)}) for denial in page.denials],
            next_cursor=page.next_cursor,
        )

    async def count_denials(request: HttpRequest, gate: Gate, principal: str) -> Result:
        params = request.query_params
        return Count(count=await gate.count_denials(tool=params.get("tool"), cursor=params.get("cursor")))

    async def audit_records(request: HttpRequest) -> Response:
        """The audit trail as stored, one JSON object a line: what `hitl audit export` and `hitl report`
        read on a store, streamed from one read snapshot."""
        try:
            await face.sign_in.api_principal(request)
            params = request.query_params
            unknown = sorted(set(params) - {"since", "until", "request"})
            if unknown:
                raise InvalidArguments(
                    f"{unknown[0]}: no such parameter (this call takes request, since, until)"
                )
            store = face.gate().store
            now = face.clock()
            since, until = timestamp(params, "since", now), timestamp(params, "until", now)
            prefix = params.get("request")
            request_id = None if prefix is None else await request_id_of(store, prefix)
            # Where the trail in the store begins (`hitl db archive`): `hitl audit verify` walks from it.
            checkpoint = await archive_backend(store).checkpoint()
        except HitlError as error:
            return problem_of(error)

        async def lines() -> AsyncIterator[str]:
            async for record in store.audit_records(since=since, until=until, request_id=request_id):
                yield json.dumps(vars(record), ensure_ascii=False) + "\n"

        headers = {"Cache-Control": "no-store", CHECKPOINT_HEADER: f"{checkpoint.seq} {checkpoint.hash}"}
        return StreamingResponse(lines(), media_type=NDJSON, headers=headers)

    listing = frozenset({"status", "tool", "cursor"})
    return [
        Route(f"{prefix}/me", endpoint(me), methods=["GET"]),
        Route(f"{prefix}/requests/count", endpoint(count, listing), methods=["GET"]),
        Route(f"{prefix}/requests/{{request_id}}/retry", endpoint(retry), methods=["POST"]),
        Route(f"{prefix}/requests/{{request_id}}/settle", endpoint(settle), methods=["POST"]),
        Route(
            f"{prefix}/denials", endpoint(denials, frozenset({"tool", "limit", "cursor"})), methods=["GET"]
        ),
        Route(
            f"{prefix}/denials/count", endpoint(count_denials, frozenset({"tool", "cursor"})), methods=["GET"]
        ),
        Route(f"{prefix}/audit/records", audit_records, methods=["GET"]),
    ]

"""`/api/v1`: the REST face. Each handler finds the caller (a bearer token; `hitl_mcp.web.auth`), makes one
Gate call or one read of `queries`, and answers with the model as JSON. A refusal is problem+json whose
`detail` is the refusal's own text, the words the CLI prints; the pages show the same calls' results."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hitl_mcp import json_input
from hitl_mcp.actions.base import describe_validation_error
from hitl_mcp.errors import HitlError, InvalidArguments
from hitl_mcp.gate import Gate
from hitl_mcp.models import AuditEvent
from hitl_mcp.web import events, queries
from hitl_mcp.web.face import WebFace
from hitl_mcp.web.grants_api import grant_routes
from hitl_mcp.web.models import ApproveBody, EditBody, RejectBody
from hitl_mcp.web.openapi import document
from hitl_mcp.web.problems import Refused, problem_of
from hitl_mcp.web.remote_api import remote_routes

BodyT = TypeVar("BodyT", bound=BaseModel)
Result = BaseModel | Sequence[BaseModel]
Work = Callable[[HttpRequest, Gate, str], Awaitable[Result]]
PREFIX = "/api/v1"
AUDIT_EVENTS = TypeAdapter(list[AuditEvent])
LISTING_PARAMETERS = frozenset(
    {"status", "tool", "waiting_on", "requested_by", "since", "until", "limit", "cursor", "q"}
)


def json_response(result: Result, status: int = 200) -> Response:
    if isinstance(result, BaseModel):
        body = result.model_dump_json()
    else:
        body = AUDIT_EVENTS.dump_json(list(result)).decode()  # type: ignore[arg-type]
    return Response(body, status_code=status, media_type="application/json")


async def body_of(request: HttpRequest, model: type[BodyT]) -> BodyT:
    """The request's JSON body as `model`; an empty body is an empty object."""
    raw = await request.body()
    if not raw.strip():
        data: Any = {}
    else:
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            raise Refused(
                415, "the body must be JSON, sent as Content-Type: application/json; nothing was done"
            )
        try:
            data = json_input.loads(raw)
        except json_input.TooDeep as error:
            raise InvalidArguments(f"body: {error}; nothing was done") from None
        except ValueError as error:
            raise InvalidArguments(f"body: not JSON ({error}); nothing was done") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidArguments(
            f"{describe_validation_error(error, prefix='body.')}; nothing was done"
        ) from None


def check_parameters(request: HttpRequest, allowed: frozenset[str]) -> None:
    """Refuse a query parameter the call does not take, rather than ignore it: the caller meant something by
    it (a filter it thinks applies), as MCP refuses an argument a tool does not take."""
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "none"
        raise InvalidArguments(f"{unknown[0]}: no such parameter (this call takes {takes}); nothing was done")


def routes(face: WebFace) -> list[Route]:
    def endpoint(
        work: Work, parameters: frozenset[str] = frozenset()
    ) -> Callable[[HttpRequest], Awaitable[Response]]:
        async def handle(request: HttpRequest) -> Response:
            try:
                principal, roles = await face.sign_in.api_caller(request)
                # The roles the caller's credential carries (a stored token's), for the handlers that decide.
                request.state.roles = roles
                check_parameters(request, parameters)
                result = await work(request, face.gate(), principal)
            except HitlError as error:
                return problem_of(error)
            return json_response(result)

        return handle

    def ref(request: HttpRequest) -> str:
        return str(request.path_params["request_id"])

    async def list_requests(request: HttpRequest, gate: Gate, principal: str) -> Result:
        now = face.clock()
        query = queries.parse_query(request.query_params, now=now)
        return await queries.list_requests(gate, principal, query, now, roles=request.state.roles)

    async def get_request(request: HttpRequest, gate: Gate, principal: str) -> Result:
        return await gate.get(ref(request))

    async def audit(request: HttpRequest, gate: Gate, principal: str) -> Result:
        return await queries.audit_of(gate, ref(request))

    async def approve(request: HttpRequest, gate: Gate, principal: str) -> Result:
        body = await body_of(request, ApproveBody)
        return await gate.approve(
            ref(request), principal, body.reason, body.arguments, roles=request.state.roles
        )

    async def reject(request: HttpRequest, gate: Gate, principal: str) -> Result:
        body = await body_of(request, RejectBody)
        return await gate.reject(ref(request), principal, body.reason, roles=request.state.roles)

    async def cancel(request: HttpRequest, gate: Gate, principal: str) -> Result:
        return await gate.cancel(ref(request), principal)

    async def edit_preview(request: HttpRequest, gate: Gate, principal: str) -> Result:
        body = await body_of(request, EditBody)
        return await queries.edit_preview(gate, ref(request), body.arguments)

    async def report(request: HttpRequest, gate: Gate, principal: str) -> Result:
        since = queries.moment(request.query_params, "since", face.clock())
        return await queries.report_of(gate, since)

    async def chain(request: HttpRequest, gate: Gate, principal: str) -> Result:
        return await queries.chain_of(gate)

    async def change_events(request: HttpRequest) -> Response:
        try:
            await face.sign_in.api_principal(request)
            check_parameters(request, frozenset())
            gate = face.gate()
            last = request.headers.get("last-event-id", "").strip()
            if last and not (last.isascii() and last.isdigit() and len(last) <= 18):
                raise InvalidArguments("Last-Event-ID: must be the id of an event this stream sent")
        except HitlError as error:
            return problem_of(error)
        return StreamingResponse(
            events.stream(gate, int(last) if last else None, face.stopping),
            media_type="text/event-stream",
            # No proxy may hold events back to gather a larger chunk.
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def openapi(request: HttpRequest) -> Response:
        gate = face.running_gate()
        return Response(
            json.dumps(document(sorted(gate.actions) if gate else ())), media_type="application/json"
        )

    return [
        # First: `/requests/count` must not be read as a request id.
        *remote_routes(face, PREFIX, endpoint),
        Route(f"{PREFIX}/openapi.json", openapi, methods=["GET"]),
        Route(f"{PREFIX}/requests", endpoint(list_requests, LISTING_PARAMETERS), methods=["GET"]),
        Route(f"{PREFIX}/requests/{{request_id}}", endpoint(get_request), methods=["GET"]),
        Route(f"{PREFIX}/requests/{{request_id}}/audit", endpoint(audit), methods=["GET"]),
        Route(f"{PREFIX}/requests/{{request_id}}/approve", endpoint(approve), methods=["POST"]),
        Route(f"{PREFIX}/requests/{{request_id}}/reject", endpoint(reject), methods=["POST"]),
        Route(f"{PREFIX}/requests/{{request_id}}/cancel", endpoint(cancel), methods=["POST"]),
        Route(f"{PREFIX}/requests/{{request_id}}/edit-preview", endpoint(edit_preview), methods=["POST"]),
        Route(f"{PREFIX}/events", change_events, methods=["GET"]),
        Route(f"{PREFIX}/report", endpoint(report, frozenset({"since"})), methods=["GET"]),
        Route(f"{PREFIX}/audit/verify", endpoint(chain), methods=["GET"]),
        *grant_routes(face, PREFIX),
    ]

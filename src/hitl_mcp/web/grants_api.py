"""`/api/v1/grants`: standing approvals over REST — list, make, read, approve a further level, revoke.

Thin like the rest of `/api/v1`: the caller is its bearer token's principal (with the token's roles), and
each handler is one Gate call. The requester of a grant is never the caller (the Gate refuses it), so an
agent's own token cannot grant its own calls; no MCP tool makes grants at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route

from hitl_mcp import grants
from hitl_mcp.errors import HitlError, InvalidArguments
from hitl_mcp.gate import Gate
from hitl_mcp.grants import Grant, GrantStatus
from hitl_mcp.web.face import WebFace
from hitl_mcp.web.problems import problem_of

GrantWork = Callable[[HttpRequest, Gate, str, tuple[str, ...]], Awaitable[BaseModel]]


class GrantRecord(BaseModel):
    """One grant as every face shows it."""

    id: str
    tool: str
    requester: str = Field(description="The one principal whose calls it covers")
    when: str | None = Field(description="The condition over arguments and preview values; null: any")
    any_arguments: bool
    status: GrantStatus
    created_by: str
    created_at: datetime
    expires_at: datetime
    uses: int | None = Field(description="How many calls it may cover in all; null: any number")
    uses_left: int | None
    uses_made: int
    approved_by: list[str]
    levels_needed: list[str] = Field(description="What each rule it can reach still waits on; empty: none")
    reason: str | None
    revoked_by: str | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, grant: Grant) -> GrantRecord:
        data = grant.as_json()
        for key in ("created_at", "expires_at", "revoked_at"):
            if data[key] is not None:
                data[key] = datetime.fromtimestamp(data[key], UTC)
        return cls.model_validate(data)


class GrantList(BaseModel):
    grants: list[GrantRecord]


class GrantBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1, max_length=200, description="The gated tool it covers")
    requester: str = Field(min_length=1, max_length=64, description="The principal whose calls it covers")
    when: str | None = Field(
        default=None,
        max_length=4000,
        description="A condition over the call's arguments and preview values, as in a policy rule",
    )
    any_arguments: bool = Field(
        default=False, description="Cover every argument: said explicitly, never implied"
    )
    expires: str = Field(
        min_length=1,
        max_length=20,
        description="How long it lasts: 30m, 2h, 7d (at most [grants] max_seconds)",
    )
    uses: int | None = Field(default=None, ge=1, le=1_000_000, description="How many calls it may cover")
    reason: str | None = Field(
        default=None, max_length=grants.REASON_MAX, description="Why, for the audit trail"
    )


GRANT_ID = {
    "name": "grant_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 40},
    "description": "The grant's id (a g followed by hex digits)",
}


def grant_routes(face: WebFace, prefix: str) -> list[Route]:
    # Imported here: api.py mounts these routes, and its helpers are the ones every /api/v1 call uses.
    from hitl_mcp.web.api import body_of, check_parameters

    def endpoint(
        work: GrantWork, status: int = 200, parameters: frozenset[str] = frozenset()
    ) -> Callable[[HttpRequest], Awaitable[Response]]:
        async def handle(request: HttpRequest) -> Response:
            try:
                principal, roles = await face.sign_in.api_caller(request)
                check_parameters(request, parameters)
                result = await work(request, face.gate(), principal, roles)
            except HitlError as error:
                return problem_of(error)
            return Response(result.model_dump_json(), status_code=status, media_type="application/json")

        return handle

    def grant_id(request: HttpRequest) -> str:
        return str(request.path_params["grant_id"])

    async def listed(request: HttpRequest, gate: Gate, principal: str, roles: tuple[str, ...]) -> BaseModel:
        every = request.query_params.get("all", "false").strip().lower()
        if every not in ("true", "false"):
            raise InvalidArguments("all: must be true or false")
        found = await gate.grants(include_finished=every == "true")
        return GrantList(grants=[GrantRecord.of(grant) for grant in found])

    async def create(request: HttpRequest, gate: Gate, principal: str, roles: tuple[str, ...]) -> BaseModel:
        body = await body_of(request, GrantBody)
        lifetime = grants.parse_lifetime(body.expires)
        grant = await gate.add_grant(
            body.tool,
            body.requester,
            body.when,
            body.any_arguments,
            timedelta(seconds=lifetime),
            body.uses,
            body.reason,
            by=principal,
            roles=roles,
        )
        return GrantRecord.of(grant)

    async def read(request: HttpRequest, gate: Gate, principal: str, roles: tuple[str, ...]) -> BaseModel:
        return GrantRecord.of(await gate.grant(grant_id(request)))

    async def approve(request: HttpRequest, gate: Gate, principal: str, roles: tuple[str, ...]) -> BaseModel:
        return GrantRecord.of(await gate.approve_grant(grant_id(request), principal, roles))

    async def revoke(request: HttpRequest, gate: Gate, principal: str, roles: tuple[str, ...]) -> BaseModel:
        return GrantRecord.of(await gate.revoke_grant(grant_id(request), principal, roles))

    return [
        Route(f"{prefix}/grants", endpoint(listed, parameters=frozenset({"all"})), methods=["GET"]),
        Route(f"{prefix}/grants", endpoint(create, status=201), methods=["POST"]),
        Route(f"{prefix}/grants/{{grant_id}}", endpoint(read), methods=["GET"]),
        Route(f"{prefix}/grants/{{grant_id}}/approve", endpoint(approve), methods=["POST"]),
        Route(f"{prefix}/grants/{{grant_id}}/revoke", endpoint(revoke), methods=["POST"]),
    ]

"""The inbox's Grants pages: standing approvals listed (active first, then waiting; expired, revoked and
used-up ones with `?all=1`), a waiting grant approved at its further level, a grant revoked, and a grant
made — most often from a request just approved (**Approve and allow similar**), its form prefilled with a
`when` built from that request's arguments, the tool and requester fixed, the scope and expiry the
approver's to edit. Each form is one Gate call, with the session's CSRF token; the Gate's rules (eligible
for every level the scope can reach, never one's own calls, an expiry under the cap) and its refusals are
the CLI's."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request as HttpRequest
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from hitl_mcp import expr, grants
from hitl_mcp.errors import HitlError, InvalidArguments
from hitl_mcp.gate import Gate
from hitl_mcp.web.auth import Session
from hitl_mcp.web.problems import status_of

if TYPE_CHECKING:
    from hitl_mcp.web.pages import Pages

PATH = "/grants"
# Where a live grant sorts: what covers calls now first, then what waits on a further level.
ORDER = {"active": 0, "waiting": 1}
USES = re.compile(r"[0-9]{1,7}")
DONE = {
    "created": "Grant made.",
    "approved": "Your approval of the grant was recorded.",
    "revoked": "Grant revoked: from the next call on it covers nothing, on every server.",
}


def when_of(arguments: Mapping[str, Any]) -> str:
    """A `when` that holds for exactly these arguments: each scalar argument equal to its value, in the
    expression language's own literals; lists, objects, nulls and names it cannot write are left out for
    the approver to narrow by hand."""
    terms = []
    for name, value in sorted(arguments.items()):
        literal = _literal(value)
        if literal is None:
            continue
        term = f"{name} = {literal}"
        try:
            parsed = expr.parse(term)
        except expr.ExpressionError:
            continue
        if expr.names(parsed) == {name}:
            terms.append(term)
    return " AND ".join(terms)


def _literal(value: Any) -> str | None:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            return None  # a `when` holds no control characters (grants.check_scope)
        return "'" + value.replace("'", "''") + "'"
    return None


@dataclass(frozen=True)
class GrantForm:
    """What the grant form shows: from a request, or as the person last sent it."""

    tool: str
    requester: str
    when: str
    any_arguments: bool = False
    expires: str = ""
    uses: str = ""
    reason: str = ""
    request_id: str | None = None
    summary: str | None = None


def routes(pages: Pages) -> list[Route]:
    page, form = pages.page, pages.form

    def cap_of(gate: Gate) -> str:
        return grants.describe_seconds(gate.settings.grants.max_seconds)

    async def listing(request: HttpRequest, session: Session, gate: Gate) -> Response:
        everything = request.query_params.get("all") == "1"
        now = pages.face.clock()
        found = [grant.at(now) for grant in await gate.grants(include_finished=everything)]
        found.sort(key=lambda grant: (ORDER.get(grant.status, 2), grant.created_at))
        return pages.render(
            "grants.html",
            nav="grants",
            session=session,
            grants=found,
            everything=everything,
            now=now,
            notice=DONE.get(request.query_params.get("done") or ""),
        )

    def render_form(
        session: Session, gate: Gate, shown: GrantForm, *, status: int = 200, refusal: str | None = None
    ) -> Response:
        return pages.render(
            "grant_form.html",
            status,
            nav="grants",
            session=session,
            shown=shown,
            cap=cap_of(gate),
            tools=sorted(gate.actions),
            refusal=refusal,
        )

    async def new(request: HttpRequest, session: Session, gate: Gate) -> Response:
        ref = request.query_params.get("request")
        if not ref:
            return render_form(session, gate, GrantForm(tool="", requester="", when=""))
        record = await gate.get(ref)
        shown = GrantForm(
            tool=record.tool,
            requester=record.requested_by,
            when=when_of(record.arguments),
            request_id=record.request_id,
            summary=record.summary,
        )
        return render_form(session, gate, shown)

    async def create(request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]) -> Response:
        shown = GrantForm(
            tool=fields.get("tool", "").strip(),
            requester=fields.get("requester", "").strip(),
            when=fields.get("when", ""),
            any_arguments=fields.get("any_arguments") == "on",
            expires=fields.get("expires", ""),
            uses=fields.get("uses", ""),
            reason=fields.get("reason", ""),
            request_id=fields.get("request") or None,
            summary=fields.get("summary") or None,
        )
        try:
            if not shown.tool:
                raise InvalidArguments("tool: choose the tool the grant covers")
            if not shown.expires.strip():
                raise InvalidArguments(
                    f"expires: a grant must expire; give a lifetime such as 2h or 1d (at most {cap_of(gate)})"
                )
            seconds = grants.parse_lifetime(shown.expires)
            uses = shown.uses.strip()
            if uses and not USES.fullmatch(uses):
                raise InvalidArguments("uses: a whole number of calls, at least 1; empty for any number")
            made = await gate.add_grant(
                shown.tool,
                shown.requester,
                shown.when if shown.when.strip() else None,
                shown.any_arguments,
                timedelta(seconds=seconds),
                int(uses) if uses else None,
                shown.reason.strip() or None,
                session.principal,
                roles=session.roles,
            )
        except HitlError as error:
            return render_form(session, gate, shown, status=status_of(error), refusal=str(error))
        return RedirectResponse(f"{PATH}?{urlencode({'done': 'created'})}#grant-{made.id}", status_code=303)

    async def approve(request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]) -> Response:
        grant_id = str(request.path_params["grant_id"])
        grant = await gate.approve_grant(grant_id, session.principal, session.roles)
        return RedirectResponse(f"{PATH}?done=approved#grant-{grant.id}", status_code=303)

    async def revoke(request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]) -> Response:
        grant_id = str(request.path_params["grant_id"])
        grant = await gate.revoke_grant(grant_id, session.principal, session.roles)
        return RedirectResponse(f"{PATH}?done=revoked&all=1#grant-{grant.id}", status_code=303)

    return [
        Route(PATH, page(listing), methods=["GET"]),
        Route(PATH, page(form(create)), methods=["POST"]),
        Route(f"{PATH}/new", page(new), methods=["GET"]),
        Route(f"{PATH}/{{grant_id}}/approve", page(form(approve)), methods=["POST"]),
        Route(f"{PATH}/{{grant_id}}/revoke", page(form(revoke)), methods=["POST"]),
    ]

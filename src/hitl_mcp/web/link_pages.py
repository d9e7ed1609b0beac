"""The decision-link page (`/r/REQUEST/TOKEN`): a person who got their own link by email or push reads the
request and approves or rejects it as themselves, without signing in.

Opening the link decides nothing — mail scanners open links — it shows the request and two forms. Only the
form's POST decides: from this origin, with the form token the page set as a cookie (as the sign-in page
does), and only if the link still holds (`notify.links.judge`). The link is spent before the Gate is called,
in one conditional write, so two POSTs racing with one link decide once; a link that holds no longer shows a
page saying why and decides nothing.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route

from hitl_mcp.errors import HitlError, NotFound
from hitl_mcp.gate import Gate
from hitl_mcp.models import Request
from hitl_mcp.notify.links import PATH, digest_of, judge
from hitl_mcp.store.links import LinkStore, LinkToken
from hitl_mcp.web.auth import LOGIN_COOKIE_SECONDS
from hitl_mcp.web.pages import Pages, form_of
from hitl_mcp.web.problems import Refused, status_of

LINK_COOKIE = "hitl_link"
REASON_LIMIT = 2000


def routes(pages: Pages) -> list[Route]:
    face = pages.face

    def store_of(gate: Gate) -> LinkStore:
        if not isinstance(gate.store, LinkStore):
            raise Refused(404, "this server's store keeps no decision links")
        return gate.store

    def refused(error: HitlError) -> Response:
        return pages.render(
            "link.html", status_of(error), refusal=str(error), why_not=None, record=None, link=None
        )

    async def read(request: HttpRequest, gate: Gate) -> tuple[LinkToken | None, Request | None, str | None]:
        """The link in the address, its request, and why it decides nothing now (None: it may decide)."""
        request_id = str(request.path_params["request_id"])
        link = await store_of(gate).link_find(digest_of(str(request.path_params["token"])))
        record: Request | None = None
        if link is not None:
            try:
                record = await gate.get(link.request_id)
            except NotFound:
                record = None
        roles = gate.roles_of(link.principal) if link is not None else ()
        return link, record, judge(link, request_id, record, roles, face.clock())

    async def render(
        request: HttpRequest,
        gate: Gate,
        link: LinkToken | None,
        record: Request | None,
        *,
        why_not: str | None,
        notice: str | None = None,
        refusal: str | None = None,
        reason: str = "",
        status: int = 200,
    ) -> Response:
        context = await pages.request_context(gate, record.request_id) if record else {"record": None}
        form_token = secrets.token_urlsafe(24)
        response = pages.render(
            "link.html",
            status,
            link=link,
            why_not=why_not,
            notice=notice,
            refusal=refusal,
            reason=reason,
            form_token=form_token,
            action=request.url.path.removesuffix("/approve").removesuffix("/reject"),
            **context,
        )
        if why_not is None and link is not None:
            response.set_cookie(
                LINK_COOKIE,
                form_token,
                max_age=LOGIN_COOKIE_SECONDS,
                path=PATH,
                httponly=True,
                samesite="strict",
                secure=face.sign_in.secure(request),
            )
        return response

    async def show(request: HttpRequest) -> Response:
        try:
            gate = face.gate()
            link, record, why_not = await read(request, gate)
            status = 200 if why_not is None else 410
            return await render(request, gate, link, record, why_not=why_not, status=status)
        except HitlError as error:
            return refused(error)

    async def decide(request: HttpRequest) -> Response:
        verdict = "approve" if request.url.path.endswith("/approve") else "reject"
        try:
            gate = face.gate()
            fields = await form_of(request)
            face.sign_in.check_form(request, fields.get("csrf"), request.cookies.get(LINK_COOKIE))
        except HitlError as error:
            return refused(error)
        try:
            link, record, why_not = await read(request, gate)
            if why_not is not None or link is None:
                return await render(request, gate, link, record, why_not=why_not, status=410)
            reason = fields.get("reason", "").strip()[:REASON_LIMIT]
            if verdict == "reject" and not reason:
                return await render(
                    request,
                    gate,
                    link,
                    record,
                    why_not=None,
                    refusal="reason: a rejection needs a reason; nothing was decided",
                    status=400,
                )
            if not await store_of(gate).link_spend(link.sha256, face.clock()):
                # Another POST with this link won the race, or it expired this instant.
                link, record, why_not = await read(request, gate)
                why_not = why_not or "This link was used."
                return await render(request, gate, link, record, why_not=why_not, status=410)
            if verdict == "approve":
                decided = await gate.approve(
                    link.request_id, link.principal, reason or None, shown=link.arguments_digest
                )
                notice = f"Your approval as {link.principal} was recorded."
            else:
                decided = await gate.reject(
                    link.request_id, link.principal, reason, shown=link.arguments_digest
                )
                notice = f"Your rejection as {link.principal} was recorded."
            # No form and no "decides nothing" notice: the person has just decided.
            return await render(request, gate, None, decided, why_not=None, notice=notice)
        except HitlError as error:
            return refused(error)

    return [
        Route(f"{PATH}/{{request_id}}/{{token}}", show, methods=["GET"]),
        Route(f"{PATH}/{{request_id}}/{{token}}/approve", decide, methods=["POST"]),
        Route(f"{PATH}/{{request_id}}/{{token}}/reject", decide, methods=["POST"]),
    ]

"""The inbox's pages. Each reads through `queries` — the Gate calls the API makes, returning the API's
models — and renders a template; each decision form is one Gate call. A refusal is shown on the page it
came from, in the refusal's own words, the ones the CLI prints.

Pages that change while they are open (the queue, a request) have a fragment (`?partial=…`) that the page's
script fetches again whenever `/api/v1/events` reports a change: what updates is rendered here too, by the
same templates.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from markupsafe import Markup
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from hitl_mcp import json_input
from hitl_mcp.errors import HitlError, InvalidArguments, NotFound, NotPending
from hitl_mcp.gate import MAX_PAGE, Gate
from hitl_mcp.models import Request, RequestSummary, Status, SummaryPage
from hitl_mcp.web import bulk, forms, grant_pages, queries, rendering
from hitl_mcp.web.auth import CALLBACK_PATH, LOGIN_COOKIE, SESSION_COOKIE, Session
from hitl_mcp.web.charts import bars, stacked_bars
from hitl_mcp.web.face import WebFace
from hitl_mcp.web.models import ReportFigures
from hitl_mcp.web.previews import preview_view
from hitl_mcp.web.problems import status_of

FORM_MEDIA = "application/x-www-form-urlencoded"
# A form's path, less what turns it into the page it was sent from: /requests/ID/approve → /requests/ID,
# /tokens/ID/revoke → /tokens.
FORM_ACTION = re.compile(
    r"/(?:approve|reject|edit)$|^/logout$|^/decide$|(?<=^/tokens)/[^/]+/revoke$"
    r"|(?<=^/grants)/[^/]+/(?:approve|revoke)$"
)
HISTORY_STATUSES = ("finished", *(status.value for status in queries.FINISHED), "all")
Page = Callable[[HttpRequest, Session, Gate], Awaitable[Response]]


@dataclass(frozen=True)
class Level:
    """One level of a request's policy, as the request page lists it."""

    number: int
    needs: str
    approved_by: list[str]
    waiting: bool


@dataclass(frozen=True)
class Outcome:
    """Where a request stands, in a word (`kind`, for styling) and a sentence."""

    kind: str
    text: str


def outcome_of(request: Request, elsewhere: str | None) -> Outcome:
    approval = request.approval
    status = request.status
    if status is Status.PENDING:
        levels = len(approval.policy.levels)
        escalated = " It has been escalated." if approval.escalated else ""
        if approval.waiting_on is None:
            return Outcome("pending", f"Waiting for a decision.{escalated}")
        return Outcome(
            "pending",
            f"Waiting on level {approval.waiting_on + 1} of {levels}: {approval.may_decide}.{escalated}",
        )
    if status is Status.APPROVED:
        if elsewhere is not None:
            return Outcome(
                "elsewhere", f"Approved. {elsewhere}: not run here; waiting for a process configured for it."
            )
        return Outcome("approved", "Approved; it runs now.")
    if status is Status.EXECUTING:
        if request.outcome_unknown:
            return Outcome(
                "unknown",
                "Outcome unknown: its claimant is gone or overdue, so it may or may not have run. It never "
                "runs again by itself: check the target, then record what you found with `hitl settle "
                f"{request.request_id[:10]} --executed|--failed --note TEXT`.",
            )
        if request.recording is not None:
            return Outcome("executing", f"Ran: {request.recording}.")
        return Outcome("executing", f"Running now, in {request.claimed_by}.")
    if status is Status.EXECUTED:
        return Outcome("executed", "Executed: the action ran once.")
    if status is Status.FAILED:
        retry = (
            " It certainly had no effect: someone who may approve it can run it again with `hitl retry`."
            if request.effect == "none"
            else " Whether it had an effect is unknown: it is never run again."
        )
        return Outcome("failed", f"Failed: {request.error}.{retry}")
    if status is Status.REJECTED:
        verdict = next((d for d in reversed(request.decisions) if d.verdict == "reject"), None)
        who = f" by {verdict.principal}" if verdict else ""
        if request.confirmation == "refused":
            who = f" by its requester, {request.requested_by}, through their client"
        return Outcome("rejected", f"Rejected{who}; it will never run.")
    if status is Status.EXPIRED:
        return Outcome("expired", "Expired without a decision; it will never run.")
    return Outcome("cancelled", "Withdrawn by its requester; it will never run.")


def levels_of(request: Request) -> list[Level]:
    approval = request.approval
    return [
        Level(
            number=index + 1,
            needs=level.describe(),
            approved_by=approval.approved_by[index] if index < len(approval.approved_by) else [],
            waiting=approval.waiting_on == index and request.status is Status.PENDING,
        )
        for index, level in enumerate(approval.policy.levels)
    ]


async def form_of(request: HttpRequest) -> dict[str, str]:
    """A form post's fields (the last of each name). Any other body has none, so it carries no CSRF token
    either and is refused with the rest."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != FORM_MEDIA:
        return {}
    body = (await request.body()).decode("utf-8", "replace")
    return dict(parse_qsl(body, keep_blank_values=True))


def local_path(target: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site (`//evil`, `/\\evil`)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


class Pages:
    def __init__(self, face: WebFace) -> None:
        self.face = face
        self.templates = rendering.environment()

    # -- rendering -----------------------------------------------------------------------------

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("session", None)
        context.setdefault("nav", None)
        context.setdefault("notice", None)
        context.setdefault("refusal", None)
        html = self.templates.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def refused(self, session: Session | None, error: HitlError) -> HTMLResponse:
        return self.render("error.html", status_of(error), session=session, refusal=str(error))

    # -- signing in first --------------------------------------------------------------------------

    def sign_in_first(self, request: HttpRequest) -> Response:
        if request.query_params.get("partial"):
            return Response("sign in again", status_code=401, media_type="text/plain")
        here = local_path(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        if request.method != "GET":
            # A form sent after the session ended: back to the page it was on, to read it again there.
            here = local_path(FORM_ACTION.sub("", request.url.path))
        if request.method == "GET" and request.headers.get("sec-fetch-site") == "cross-site":
            # A link followed from mail or chat arrives without the SameSite=Strict cookie; a navigation
            # that starts on this site brings it, so a signed-in person lands where the link points.
            return self.render("reopen.html", here=here)
        return RedirectResponse("/login?" + urlencode({"next": here}), status_code=303)

    def page(self, handler: Page) -> Callable[[HttpRequest], Awaitable[Response]]:
        async def handle(request: HttpRequest) -> Response:
            session = await self.face.sign_in.session_of(request)
            if session is None:
                return self.sign_in_first(request)
            try:
                return await handler(request, session, self.face.gate())
            except HitlError as error:
                return self.refused(session, error)

        return handle

    def form(
        self, handler: Callable[[HttpRequest, Session, Gate, dict[str, str]], Awaitable[Response]]
    ) -> Page:
        """A state-changing form: from this origin, with the session's CSRF token, or refused with 403."""

        async def handle(request: HttpRequest, session: Session, gate: Gate) -> Response:
            fields = await form_of(request)
            self.face.sign_in.check_form(request, fields.get("csrf"), session.csrf)
            return await handler(request, session, gate, fields)

        return handle

    # -- the queue ---------------------------------------------------------------------------------

    async def queue(
        self,
        request: HttpRequest,
        session: Session,
        gate: Gate,
        *,
        status: int = 200,
        refusal: str | None = None,
        picked: frozenset[str] = frozenset(),
        reason: str = "",
    ) -> Response:
        now = self.face.clock()
        params = {key: value for key, value in request.query_params.items() if value and key != "status"}
        # As much of the queue as one page holds: what arrives joins its end, and should be seen arriving.
        query = queries.parse_query({"limit": str(MAX_PAGE), **params}, now=now)
        records, cursor = await queries.list_records(gate, session.principal, query, now, roles=session.roles)
        page = SummaryPage(requests=[RequestSummary.of(r) for r in records], next_cursor=cursor)
        context: dict[str, Any] = {
            "page": page,
            "now": now,
            "query": query,
            "session": session,
            # Each row's checkbox names the arguments it showed: a selection approves only what was read.
            "picks": {r.request_id: bulk.pick_value(r.request_id, r.arguments_digest) for r in records},
            "picked": picked,
        }
        if request.query_params.get("partial") == "rows":
            return self.render("_queue_rows.html", **context)
        live = {key: value for key, value in params.items() if key in ("tool", "waiting_on", "cursor", "q")}
        counts = await queries.queue_counts(gate, session.principal, now, roles=session.roles)
        return self.render(
            "queue.html",
            status,
            nav="queue",
            tools=sorted(gate.actions),
            counts=counts,
            refusal=refusal,
            reason=reason,
            live_url="/?" + urlencode({**live, "partial": "rows"}),
            next_url="/?" + urlencode({**live, "cursor": page.next_cursor}) if page.next_cursor else None,
            **context,
        )

    async def decide_selected(
        self, request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]
    ) -> Response:
        reason = fields.get("reason", "")
        picks = bulk.picks_of((await request.body()).decode("utf-8", "replace"))
        try:
            verdict = bulk.verdict_of(fields.get("verdict"))
            bulk.check(picks, verdict, reason)
        except HitlError as error:
            chosen = frozenset(pick.ref for pick in picks)
            return await self.queue(
                request,
                session,
                gate,
                status=status_of(error),
                refusal=str(error),
                picked=chosen,
                reason=reason,
            )
        results = await bulk.decide_each(gate, session.principal, session.roles, verdict, picks, reason)
        done = [
            (result, outcome_of(result.record, self.elsewhere(gate, result.record)))
            for result in results
            if result.record is not None
        ]
        return self.render(
            "decided.html",
            session=session,
            verdict=verdict,
            done=done,
            refused=[result for result in results if result.record is None],
        )

    @staticmethod
    def elsewhere(gate: Gate, record: Request) -> str | None:
        return gate.elsewhere(record) if record.status is Status.APPROVED else None

    # -- one request -------------------------------------------------------------------------------

    async def request_context(self, gate: Gate, ref: str) -> dict[str, Any]:
        record = await gate.get(ref)
        trail = await queries.audit_of(gate, record.request_id)
        elsewhere = gate.elsewhere(record) if record.status is Status.APPROVED else None
        return {
            "record": record,
            "trail": trail,
            "preview": preview_view(record.tool, record.preview),
            "outcome": outcome_of(record, elsewhere),
            "levels": levels_of(record),
            "seconds_left": record.expires_at.timestamp() - self.face.clock(),
            "decidable": record.status is Status.PENDING,
            "editable": record.status is Status.PENDING and record.tool in gate.actions,
        }

    async def request_page(
        self,
        request: HttpRequest,
        session: Session,
        gate: Gate,
        *,
        status: int = 200,
        refusal: str | None = None,
        reason: str = "",
    ) -> Response:
        ref = str(request.path_params["request_id"])
        context = await self.request_context(gate, ref)
        if request.query_params.get("partial") == "record":
            return self.render("_request_record.html", session=session, **context)
        done = {"approved": "Your approval was recorded.", "rejected": "Your rejection was recorded."}
        return self.render(
            "request.html",
            status,
            session=session,
            refusal=refusal,
            notice=done.get(request.query_params.get("done") or ""),
            reason=reason,
            **context,
        )

    async def decided(
        self,
        request: HttpRequest,
        session: Session,
        gate: Gate,
        work: Awaitable[Request],
        reason: str,
        done: str,
        then: str | None = None,
    ) -> Response:
        try:
            record = await work
        except HitlError as error:
            return await self.request_page(
                request, session, gate, status=status_of(error), refusal=str(error), reason=reason
            )
        if then is not None:
            return RedirectResponse(f"{then}{record.request_id}", status_code=303)
        return RedirectResponse(f"/requests/{record.request_id}?done={done}", status_code=303)

    async def approve(
        self, request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]
    ) -> Response:
        ref = str(request.path_params["request_id"])
        reason = fields.get("reason", "")

        async def approving() -> Request:
            record = await gate.get(ref)
            read = fields.get("digest")
            if read and read != record.arguments_digest:
                # What the person read and confirmed is not what stands now: an approval is of what was shown.
                raise NotPending(
                    f"request {record.request_id} changed since you read it (its arguments were edited); "
                    "read it again; nothing was changed"
                )
            try:
                changes = json_input.loads(fields["arguments"]) if fields.get("arguments") else None
            except json_input.TooDeep as error:
                raise InvalidArguments(f"arguments: {error}; nothing was changed") from None
            except ValueError:
                changes = ""
            if changes is not None and not isinstance(changes, dict):
                raise InvalidArguments("arguments: must be an object of argument names to new values")
            return await gate.approve(
                record.request_id, session.principal, reason.strip() or None, changes, roles=session.roles
            )

        if fields.get("then") == "grant":
            # Approve and allow similar: the request first, then the grant form built from it.
            return await self.decided(
                request, session, gate, approving(), reason, "approved", then="/grants/new?request="
            )
        return await self.decided(request, session, gate, approving(), reason, "approved")

    async def reject(
        self, request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]
    ) -> Response:
        ref = str(request.path_params["request_id"])
        reason = fields.get("reason", "")
        return await self.decided(
            request,
            session,
            gate,
            gate.reject(ref, session.principal, reason, roles=session.roles),
            reason,
            "rejected",
        )

    # -- edit and approve --------------------------------------------------------------------------

    async def edit_form(
        self,
        request: HttpRequest,
        session: Session,
        gate: Gate,
        *,
        submitted: Mapping[str, str] | None = None,
        status: int = 200,
        refusal: str | None = None,
        notice: str | None = None,
    ) -> Response:
        record = await gate.get(str(request.path_params["request_id"]))
        action = gate.actions.get(record.tool)
        if action is None:
            raise NotFound(f"{record.tool} is no longer an action here; its request cannot be edited")
        if record.status is not Status.PENDING:
            raise NotPending(
                f"request {record.request_id} is {record.status}, not pending; nothing was changed"
            )
        shown = forms.fields(action, record.arguments)
        if submitted is not None:
            shown = [replace(field, value=submitted.get(field.key, field.value)) for field in shown]
        return self.render(
            "edit.html", status, session=session, record=record, fields=shown, refusal=refusal, notice=notice
        )

    async def edit_page(self, request: HttpRequest, session: Session, gate: Gate) -> Response:
        return await self.edit_form(request, session, gate)

    async def review_edit(
        self, request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]
    ) -> Response:
        record = await gate.get(str(request.path_params["request_id"]))
        action = gate.actions.get(record.tool)
        if action is None:
            raise NotFound(f"{record.tool} is no longer an action here; its request cannot be edited")
        try:
            changes = forms.changes(action, record.arguments, fields)
            if not changes:
                unchanged = "Nothing was changed: change a value first."
                return await self.edit_form(request, session, gate, submitted=fields, notice=unchanged)
            edit = await queries.edit_preview(gate, record.request_id, changes)
        except HitlError as error:
            return await self.edit_form(
                request, session, gate, submitted=fields, status=status_of(error), refusal=str(error)
            )
        return self.render(
            "confirm.html",
            session=session,
            record=record,
            edit=edit,
            preview=preview_view(record.tool, edit.preview),
            changes_json=json.dumps(changes, ensure_ascii=False),
        )

    # -- history and report ------------------------------------------------------------------------

    async def history(self, request: HttpRequest, session: Session, gate: Gate) -> Response:
        now = self.face.clock()
        params = {key: value for key, value in request.query_params.items() if value}
        if params.get("status", "finished") not in HISTORY_STATUSES:
            raise InvalidArguments(f"status: must be one of {', '.join(HISTORY_STATUSES)}")
        query = queries.parse_query(params, now=now, default_status="finished")
        page = await queries.list_requests(gate, session.principal, query, now, roles=session.roles)
        kept = {key: value for key, value in params.items() if key != "cursor" and value}
        return self.render(
            "history.html",
            nav="history",
            session=session,
            page=page,
            params=params,
            tools=sorted(gate.actions),
            statuses=HISTORY_STATUSES,
            next_url="/history?" + urlencode({**kept, "cursor": page.next_cursor})
            if page.next_cursor
            else None,
        )

    async def report(self, request: HttpRequest, session: Session, gate: Gate) -> Response:
        since_text = request.query_params.get("since", "")
        since = queries.moment({"since": since_text} if since_text else {}, "since", self.face.clock())
        figures = await queries.report_of(gate, since)
        chain = await queries.chain_of(gate)
        return self.render(
            "report.html",
            nav="report",
            session=session,
            figures=figures,
            chain=chain,
            since=since_text,
            charts=charts_of(figures),
        )

    # -- signing in --------------------------------------------------------------------------------

    async def login_page(self, request: HttpRequest) -> Response:
        token = request.query_params.get("token")
        try:
            principal = await self.face.sign_in.principal_of(token) if token else None
        except HitlError as error:
            return self.login(request, refusal=str(error), status=status_of(error))
        return self.login(
            request,
            token=token if principal else None,
            principal=principal,
            bad_link=bool(token) and not principal,
        )

    def login(
        self,
        request: HttpRequest,
        *,
        token: str | None = None,
        principal: str | None = None,
        bad_link: bool = False,
        refusal: str | None = None,
        status: int = 200,
        signed_out_at: str | None = None,
    ) -> Response:
        form_token = secrets.token_urlsafe(24)
        response = self.render(
            "login.html",
            status,
            token=token,
            principal=principal,
            bad_link=bad_link,
            refusal=refusal,
            form_token=form_token,
            next=local_path(request.query_params.get("next")),
            sso=self.face.sign_in.sso is not None,
            signed_out_at=signed_out_at,
        )
        self.face.sign_in.set_login_cookie(response, request, form_token)
        return response

    async def sign_in(self, request: HttpRequest) -> Response:
        try:
            fields = await form_of(request)
            self.face.sign_in.check_form(request, fields.get("csrf"), request.cookies.get(LOGIN_COOKIE))
            signed = await self.face.sign_in.access_of(fields.get("token", ""))
        except HitlError as error:
            return self.login(request, refusal=str(error), status=status_of(error))
        if signed is None:
            return self.login(
                request,
                refusal="that token is not one this server knows (a sign-in link lasts until its server "
                "stops)",
                status=401,
            )
        principal, roles = signed
        session_id, _ = await self.face.sign_in.start(principal, roles=roles)
        response = RedirectResponse(local_path(fields.get("next")), status_code=303)
        self.face.sign_in.set_session_cookie(response, request, session_id)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def sign_out(
        self, request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]
    ) -> Response:
        await self.face.sign_in.end(request)
        sso = self.face.sign_in.sso
        response: Response
        if sso is not None and session.id_token is not None:
            # Signed out here; the provider's own session is the person's to end, offered as a link.
            after = f"{sso.redirect_uri.removesuffix(CALLBACK_PATH)}/login"
            response = self.login(request, signed_out_at=sso.end_session_url(session.id_token, after))
        else:
            response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def routes(self) -> list[Route]:
        page, form = self.page, self.form
        return [
            Route("/", page(self.queue), methods=["GET"]),
            Route("/decide", page(form(self.decide_selected)), methods=["POST"]),
            Route("/requests/{request_id}", page(self.request_page), methods=["GET"]),
            Route("/requests/{request_id}/approve", page(form(self.approve)), methods=["POST"]),
            Route("/requests/{request_id}/reject", page(form(self.reject)), methods=["POST"]),
            Route("/requests/{request_id}/edit", page(self.edit_page), methods=["GET"]),
            Route("/requests/{request_id}/edit", page(form(self.review_edit)), methods=["POST"]),
            Route("/history", page(self.history), methods=["GET"]),
            Route("/report", page(self.report), methods=["GET"]),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.sign_in, methods=["POST"]),
            Route("/logout", page(form(self.sign_out)), methods=["POST"]),
            *grant_pages.routes(self),
        ]


@dataclass(frozen=True)
class Chart:
    title: str
    svg: Markup
    empty: bool


def charts_of(figures: ReportFigures) -> list[Chart]:
    outcomes = list(figures.outcomes)
    per_tool = [(tool, dict(tool_figures.outcomes)) for tool, tool_figures in figures.tools.items()]
    times = figures.time_to_decision
    timed = [
        (name, value, rendering.duration(value) if value >= 1 else f"{value:.1f}s")
        for name, value in (("p50", times.p50_seconds), ("p95", times.p95_seconds))
        if value is not None
    ]
    approvers = [(name, counts) for name, counts in figures.approvers.items()]
    return [
        Chart(
            "Outcomes per tool",
            stacked_bars("outcomes", "Outcomes per tool", per_tool, outcomes),
            not per_tool,
        ),
        Chart("Time to decision", bars("decision-time", "Time to decision", timed), not timed),
        Chart(
            "Decisions per approver",
            stacked_bars("approvers", "Decisions per approver", approvers, ["approved", "rejected"]),
            not approvers,
        ),
    ]

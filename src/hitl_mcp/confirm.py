"""`approval = "confirm"` on the MCP face: ask the person at the calling client, through form elicitation,
whether the request just filed should run.

The Gate decides; this module only asks and reports the answer to `Gate.confirm`. Whatever goes wrong in
the asking (no elicitation capability, a decline, a cancel, no answer within the bound, a broken client)
leaves the request pending for one approval by anyone but the requester: it never runs unconfirmed.

Both protocol generations:
- up to 2025-11-25, the server sends `elicitation/create` to the client in the middle of the call;
- from 2026-07-28, the call answers `input_required` with the question and a request state naming the
  request; the client retries the same call with the person's answer. The SDK seals that state (an
  ephemeral per-process key unless `request_state_security` is given), and even unsealed it could name
  only a request its caller filed under a confirm rule, as shown (the Gate refuses anything else).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import anyio
from mcp.server.elicitation import AcceptedElicitation, elicit_with_validation, render_elicitation_schema
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import (
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitRequestURLParams,
    ElicitResult,
    InputRequiredResult,
)
from pydantic import BaseModel, Field

from hitl_mcp.display import clip, visible
from hitl_mcp.errors import HitlError
from hitl_mcp.gate import Filing, Gate
from hitl_mcp.models import Request, Status

logger = logging.getLogger(__name__)

# The key of our one question in `input_requests` / `input_responses`, and the state's marker.
QUESTION_KEY = "hitl_confirm"
STATE_KIND = "hitl-confirm/1"
LINK_KEY = "hitl_inbox_link"
LINK_KIND = "hitl-link/1"
PREVIEW_VALUES = 6


class Confirmation(BaseModel):
    """What the person answers: yes or no, and why not if they like."""

    confirm: bool = Field(description="Yes runs it now, once; no rejects it and nothing runs")
    reason: str | None = Field(default=None, max_length=2000, description="Why not (optional)")


def question(request: Request) -> str:
    """What will run, stated exactly: the summary and the first preview values, agent text made visible."""
    lines = [
        f"Run this now? {visible(request.summary)}",
        f"Tool: {visible(request.tool)} (request {request.request_id})",
    ]
    for name, value in list(request.preview.items())[:PREVIEW_VALUES]:
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        lines.append(f"{visible(str(name))}: {clip(shown, 200)}")
    lines.append("Yes runs it once; no rejects it and nothing runs.")
    return "\n".join(lines)


def can_elicit(ctx: Context[Any, Any]) -> bool:
    """Whether the client declared form elicitation (a bare `elicitation: {}` means form)."""
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def is_modern(ctx: Context[Any, Any]) -> bool:
    version = ctx.protocol_version
    return version is not None and version >= "2026-07-28"


def wants_confirmation(request: Request, *, repeated: bool) -> bool:
    return not repeated and request.status is Status.PENDING and request.approval.policy.approval == "confirm"


def question_round(request: Request) -> InputRequiredResult:
    """The 2026-07-28 way: the question goes back with the answer; the client retries with the reply."""
    state = json.dumps(
        {"kind": STATE_KIND, "request_id": request.request_id, "digest": request.arguments_digest}
    )
    ask = ElicitRequest(
        params=ElicitRequestFormParams(
            message=question(request), requested_schema=render_elicitation_schema(Confirmation)
        )
    )
    return InputRequiredResult(input_requests={QUESTION_KEY: ask}, request_state=state)


def _our_state(ctx: Context[Any, Any]) -> tuple[str, str, str] | None:
    """(kind, request id, digest) of the request state we sent, on a 2026-07-28 retry; None otherwise."""
    if ctx.request_state is None:
        return None
    try:
        state = json.loads(ctx.request_state)
    except ValueError:
        raise ToolError("request state: not what this server sent; call the tool again") from None
    if not isinstance(state, dict) or state.get("kind") not in (STATE_KIND, LINK_KIND):
        return None
    kind, request_id, digest = state.get("kind"), state.get("request_id"), state.get("digest")
    if not isinstance(request_id, str) or not isinstance(digest, str):
        raise ToolError("request state: not what this server sent; call the tool again")
    return str(kind), request_id, digest


def answered(ctx: Context[Any, Any]) -> tuple[str, str, Confirmation | None] | None:
    """On a 2026-07-28 retry: (request id, arguments digest, the answer, None for no/decline/cancel);
    None when this call is not a retry of our question."""
    ours = _our_state(ctx)
    if ours is None or ours[0] != STATE_KIND:
        return None
    _, request_id, digest = ours
    reply = (ctx.input_responses or {}).get(QUESTION_KEY)
    if not isinstance(reply, ElicitResult) or reply.action != "accept" or reply.content is None:
        return request_id, digest, None
    try:
        return request_id, digest, Confirmation.model_validate(reply.content)
    except ValueError:
        raise ToolError("confirm: the answer must be {confirm: true|false, reason?: text}") from None


async def ask_now(ctx: Context[Any, Any], request: Request, timeout: float) -> Confirmation | None:
    """The older way: a server-to-client request in the middle of the call. None: no usable yes or no
    within `timeout` (declined, cancelled, unanswered or a broken answer)."""
    with anyio.move_on_after(timeout):
        try:
            outcome = await elicit_with_validation(
                session=ctx.request_context.session,
                message=question(request),
                schema=Confirmation,
                related_request_id=ctx.request_id,
            )
        except (ValueError, HitlError, OSError) as error:  # a client that answers nonsense
            logger.info("confirmation of %s not usable: %s", request.request_id, error)
            return None
        except Exception as error:  # the MCPError a client answers with: the request still waits
            logger.info("confirmation of %s failed: %s", request.request_id, error)
            return None
        if isinstance(outcome, AcceptedElicitation):
            return outcome.data
        return None
    logger.info("confirmation of %s not answered within %s s", request.request_id, timeout)
    return None


async def resume(ctx: Context[Any, Any], gate: Gate, tool: str, principal: str) -> Filing | None:
    """A 2026-07-28 retry carrying the person's answer: confirm or reject the request it names (after the
    inbox link, just where it stands). None when this call is not such a retry (file it as usual)."""
    ours = _our_state(ctx)
    if ours is not None and ours[0] == LINK_KIND:
        # Whatever the person did with the link, it decided nothing: the answer is where the request is.
        linked = await gate.get(ours[1])
        if linked.tool != tool:
            raise ToolError(
                f"request state: names a request for {linked.tool}, not {tool}; call the tool again"
            )
        return Filing(linked)
    reply = answered(ctx)
    if reply is None:
        return None
    request_id, digest, answer = reply
    request = await gate.get(request_id)
    if request.tool != tool:
        raise ToolError(f"request state: names a request for {request.tool}, not {tool}; call the tool again")
    if answer is None:
        # Declined or cancelled: the request waits for someone else, as if the client could not ask.
        return Filing(request)
    return Filing(await gate.confirm(request_id, principal, answer.confirm, _reason(answer), digest=digest))


async def settle(
    ctx: Context[Any, Any], gate: Gate, filing: Filing, principal: str, *, ask_later: bool = True
) -> Filing | InputRequiredResult:
    """After filing: ask the person if the rule says confirm and the client can be asked (a 2026-07-28
    client only if `ask_later`)."""
    request = filing.request
    timeout = gate.settings.gate.confirm_timeout_seconds
    if not wants_confirmation(request, repeated=filing.repeated) or not can_elicit(ctx):
        return await _offer_link(ctx, gate, filing, ask_later=ask_later)
    if is_modern(ctx):
        return question_round(request) if ask_later else filing
    answer = await ask_now(ctx, request, timeout)
    if answer is None:
        return filing
    return Filing(await gate.confirm(request.request_id, principal, answer.confirm, _reason(answer)))


async def _offer_link(
    ctx: Context[Any, Any], gate: Gate, filing: Filing, *, ask_later: bool
) -> Filing | InputRequiredResult:
    """A request that waits on other people: a client that opens links (URL-mode elicitation) is offered
    its inbox page when `[web] public_url` is set. A link to follow it, never a decision."""
    request = filing.request
    public_url = gate.settings.web.public_url
    if (
        filing.repeated
        or request.status is not Status.PENDING
        or public_url is None
        or not can_open_links(ctx)
    ):
        return filing
    url = inbox_url(public_url, request.request_id)
    message = link_message(request)
    if is_modern(ctx):
        return link_round(request, url) if ask_later else filing
    with anyio.move_on_after(gate.settings.gate.confirm_timeout_seconds):
        try:
            await ctx.elicit_url(message, url, elicitation_id=request.request_id)
        except Exception as error:  # the client's refusal changes nothing: the request still waits
            logger.info("inbox link for %s not offered: %s", request.request_id, error)
    return filing


def can_open_links(ctx: Context[Any, Any]) -> bool:
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and elicitation.url is not None


def inbox_url(public_url: str, request_id: str) -> str:
    return f"{public_url.rstrip('/')}/requests/{quote(request_id, safe='')}"


def link_message(request: Request) -> str:
    waits = request.approval.may_decide or "a decision"
    return (
        f"Request {request.request_id} ({visible(request.summary)}) waits on {waits}. You may open its inbox "
        "page to follow it; opening it decides nothing."
    )


def link_round(request: Request, url: str) -> InputRequiredResult:
    """The 2026-07-28 way to offer the link: the retry that follows is answered with the pending record."""
    state = json.dumps(
        {"kind": LINK_KIND, "request_id": request.request_id, "digest": request.arguments_digest}
    )
    offer = ElicitRequest(params=ElicitRequestURLParams(message=link_message(request), url=url))
    return InputRequiredResult(input_requests={LINK_KEY: offer}, request_state=state)


def _reason(answer: Confirmation) -> str | None:
    if answer.confirm or answer.reason is None or not answer.reason.strip():
        return None
    return answer.reason.strip()

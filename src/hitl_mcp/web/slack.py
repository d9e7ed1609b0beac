"""`POST /slack/interactions`: the Slack app's Interactivity Request URL — button presses and the Reject
modal's submission.

Every request is verified before anything else (slack_sdk's `SignatureVerifier`: `v0=` HMAC-SHA256 of
`v0:{timestamp}:{raw body}` with the signing secret, compared in constant time, refused more than five
minutes off): a forged, stale or malformed one gets 401 and decides nothing. The presser's Slack user id,
which Slack signed, is the only thing that says who decides (`[principals.NAME] slack_user`); a button's
value only says which request. Slack wants an answer within three seconds, so the press is acknowledged at
once and the Gate is called after the answer is sent (Starlette runs a response's background task then).
Whatever the Gate refuses — not mapped, the requester, a missing role, already decided, expired — is told
to the presser alone in an ephemeral message, in the Gate's own words.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.background import BackgroundTask
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hitl_mcp import json_input
from hitl_mcp.config import Settings
from hitl_mcp.errors import HitlError
from hitl_mcp.gate import Gate
from hitl_mcp.models import Status
from hitl_mcp.notify import slack_blocks
from hitl_mcp.notify.slack_api import SlackApi, SlackCallFailed
from hitl_mcp.notify.slack_settings import SlackSettings
from hitl_mcp.web.face import WebFace

INTERACTIONS_PATH = "/slack/interactions"
Handler = Callable[[HttpRequest], Awaitable[Response]]

logger = logging.getLogger(__name__)


def routes(face: WebFace) -> list[Route]:
    return [Route(INTERACTIONS_PATH, _interactions(face), methods=["POST"])]


def principal_of(settings: Settings, slack_user: str) -> str | None:
    """The principal whose `slack_user` is this Slack user id, or None."""
    for name, known in settings.principals.items():
        if known.slack_user is not None and known.slack_user == slack_user:
            return name
    return None


class Unverified(Exception):
    """Not a request Slack signed with this app's secret, or not one this endpoint understands."""


def verified_payload(slack: SlackSettings, body: bytes, timestamp: str | None, signature: str | None) -> Any:
    # Imported at the first press, not when every server starts.
    from slack_sdk.signature import SignatureVerifier

    verifier = SignatureVerifier(slack.signing_secret.get_secret_value())
    try:
        valid = verifier.is_valid(body, timestamp, signature)
    except (ValueError, TypeError):  # a timestamp that is not a number
        valid = False
    if not valid:
        raise Unverified(
            "the request is not signed by this Slack app, or its timestamp is over 5 minutes off"
        )
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=10)
        payload = json_input.loads(fields["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError) as error:
        raise Unverified(f"payload: not a Slack interaction ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("user"), dict):
        raise Unverified("payload: not a Slack interaction (no user)")
    return payload


@dataclass(frozen=True)
class Press:
    """One interaction as the handler acts on it; every field is from the signed payload."""

    user: str
    channel: str | None
    request_id: str


def _interactions(face: WebFace) -> Handler:
    apis: dict[SlackSettings, SlackApi] = {}

    async def interactions(request: HttpRequest) -> Response:
        gate = face.gate()
        slack = gate.settings.slack
        if slack is None:
            return Response(
                "this server has no [slack] app configured", status_code=404, media_type="text/plain"
            )
        body = await request.body()
        try:
            payload = verified_payload(
                slack,
                body,
                request.headers.get("x-slack-request-timestamp"),
                request.headers.get("x-slack-signature"),
            )
        except Unverified as refused:
            logger.warning("a Slack interaction was refused: %s", refused)
            return Response(str(refused), status_code=401, media_type="text/plain")
        api = apis.get(slack)
        if api is None:
            api = apis[slack] = SlackApi(slack)
        kind = payload.get("type")
        if kind == "block_actions":
            return _on_press(gate, api, payload)
        if kind == "view_submission":
            return _on_submission(gate, api, payload)
        return Response(status_code=200)  # other kinds (a closed modal, shortcuts): nothing to do

    return interactions


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _on_press(gate: Gate, api: SlackApi, payload: dict[str, Any]) -> Response:
    actions = payload.get("actions")
    action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
    action_id = action.get("action_id")
    request_id = _text(action.get("value"))
    user = _text(payload["user"].get("id"))
    channel = payload.get("channel")
    channel_id = _text(channel.get("id")) if isinstance(channel, dict) else None
    if (
        action_id not in (slack_blocks.APPROVE_ACTION, slack_blocks.REJECT_ACTION)
        or not request_id
        or not user
    ):
        return Response(status_code=200)  # Open in inbox is a link: Slack reports it, nothing to decide
    press = Press(user, channel_id, request_id)
    if action_id == slack_blocks.APPROVE_ACTION:
        return Response(status_code=200, background=BackgroundTask(_approve, gate, api, press))
    trigger = _text(payload.get("trigger_id"))
    return Response(status_code=200, background=BackgroundTask(_ask_reason, gate, api, press, trigger))


def _on_submission(gate: Gate, api: SlackApi, payload: dict[str, Any]) -> Response:
    view = payload.get("view")
    if not isinstance(view, dict) or view.get("callback_id") != slack_blocks.REJECT_CALLBACK:
        return Response(status_code=200)
    try:
        metadata = json_input.loads(str(view.get("private_metadata") or "{}"))
        values = view["state"]["values"][slack_blocks.REASON_BLOCK][slack_blocks.REASON_INPUT]
        reason = str(values.get("value") or "").strip()
        request_id = str(metadata["request_id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return Response("view: not hitl's reject modal", status_code=400, media_type="text/plain")
    if not reason:
        # Slack shows this under the field and keeps the modal open.
        return JSONResponse(
            {
                "response_action": "errors",
                "errors": {slack_blocks.REASON_BLOCK: "A rejection needs a reason."},
            }
        )
    user = str(payload["user"].get("id") or "")
    press = Press(user, _text(metadata.get("channel")), request_id)
    return Response(status_code=200, background=BackgroundTask(_reject, gate, api, press, reason))


async def _approve(gate: Gate, api: SlackApi, press: Press) -> None:
    principal = await _principal(gate, api, press)
    if principal is None:
        return
    try:
        decided = await gate.approve(press.request_id, principal, roles=())
    except HitlError as refused:
        await _tell(api, press, f"Nothing was decided: {refused}")
        return
    except Exception:
        logger.exception("approving %s from Slack crashed", press.request_id)
        await _tell(api, press, "Nothing was decided: hitl failed while approving; see the server's log.")
        return
    await _tell(
        api,
        press,
        f"You approved {decided.tool} request {decided.request_id[:10]}: it is {decided.status.value}.",
    )


async def _ask_reason(gate: Gate, api: SlackApi, press: Press, trigger: str | None) -> None:
    principal = await _principal(gate, api, press)
    if principal is None:
        return
    # Only to spare the presser a modal that cannot succeed; the Gate decides again on submission.
    try:
        found = await gate.store.get(press.request_id)
    except HitlError as refused:  # the store is down: say so rather than open a form that cannot work
        await _tell(api, press, f"Nothing was decided: {refused}")
        return
    if found is None:
        await _tell(api, press, f"Nothing was decided: there is no request {press.request_id[:64]}.")
        return
    if found.status is not Status.PENDING:
        await _tell(
            api,
            press,
            f"Nothing was decided: request {press.request_id[:10]} is already {found.status.value}.",
        )
        return
    if trigger is None:
        await _tell(api, press, "Nothing was decided: Slack sent no trigger for the reason form; try again.")
        return
    where = {"channel": press.channel} if press.channel else {}
    modal = slack_blocks.reason_modal(press.request_id, found.summary, where)
    try:
        await api.call("views.open", trigger_id=trigger, view=modal)
    except SlackCallFailed as failed:
        logger.warning("could not open the reject form for %s: %s", press.request_id, failed)


async def _reject(gate: Gate, api: SlackApi, press: Press, reason: str) -> None:
    principal = await _principal(gate, api, press)
    if principal is None:
        return
    try:
        decided = await gate.reject(press.request_id, principal, reason)
    except HitlError as refused:
        await _tell(api, press, f"Nothing was decided: {refused}")
        return
    except Exception:
        logger.exception("rejecting %s from Slack crashed", press.request_id)
        await _tell(api, press, "Nothing was decided: hitl failed while rejecting; see the server's log.")
        return
    await _tell(api, press, f"You rejected {decided.tool} request {decided.request_id[:10]}.")


async def _principal(gate: Gate, api: SlackApi, press: Press) -> str | None:
    principal = principal_of(gate.settings, press.user)
    if principal is None:
        await _tell(
            api,
            press,
            f"Nothing was decided: your Slack user {press.user} is not a hitl principal; an operator maps it "
            'with [principals.NAME] slack_user = "…"',
        )
    return principal


async def _tell(api: SlackApi, press: Press, text: str) -> None:
    """An ephemeral message to the presser alone, in the channel of the press."""
    if press.channel is None:
        logger.info("slack user %s (no channel to answer in): %s", press.user, text)
        return
    try:
        await api.call(
            "chat.postEphemeral", channel=press.channel, user=press.user, text=slack_blocks.mrkdwn(text)
        )
    except SlackCallFailed as failed:
        logger.warning("could not answer slack user %s: %s", press.user, failed)

"""The Block Kit of a message the `[slack]` bot posts about a request, and of its later updates.

The words are the Slack form every notification has (`render.slack_body`: agent text escaped for mrkdwn,
hidden characters shown as escapes). While the request waits, the CLI commands give way to buttons:
Approve, Reject and — with `[web] public_url` — Open in inbox. A button's `value` is the request id and
nothing more: who pressed is Slack's signed user id, never anything in the message.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from hitl_mcp import display
from hitl_mcp.notify import render

APPROVE_ACTION = "hitl_approve"
REJECT_ACTION = "hitl_reject"
OPEN_ACTION = "hitl_open"
REJECT_CALLBACK = "hitl_reject_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
REASON_LIMIT = 2000


def time_left(expires_at: str, now: float) -> str:
    """ "2 h 5 min", "4 min", or "expired": what a person reading now has left."""
    seconds = int(datetime.fromisoformat(expires_at).timestamp() - now)
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes = max(1, rest // 60) if not (days or hours) else rest // 60
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def decided(payload: dict[str, Any]) -> str:
    """Who decided and what became of it, in mrkdwn: "*Approved by* alice · *now* executed"."""
    request = payload["request"]
    status = request["status"]
    approvers = [str(name) for name in request["approval"].get("approved_by") or []]
    if status == "rejected" or payload["event"] == "rejected":
        said = f"*Rejected by* {mrkdwn(str(payload['actor']))}"
    elif approvers:
        said = f"*Approved by* {mrkdwn(', '.join(approvers))}"
    elif status == "cancelled":
        said = f"*Withdrawn by* {mrkdwn(str(payload['actor']))}"
    else:
        said = "*No decision*"
    return f"{said} · *now* {mrkdwn(status)}"


def message(payload: dict[str, Any], *, public_url: str | None, now: float) -> dict[str, Any]:
    """`text` and `blocks` for chat.postMessage / chat.update."""
    body = render.slack_body(payload, public_url=public_url)
    blocks: list[dict[str, Any]] = body["blocks"]
    request = payload["request"]
    if request["status"] != "pending":
        # The CLI commands are no use on a decided request; who decided is what everyone wants to know.
        blocks = [
            *blocks[:-1],
            {"type": "context", "elements": [{"type": "mrkdwn", "text": decided(payload)}]},
        ]
        return {"text": body["text"], "blocks": blocks}
    request_id = request["request_id"]
    # The last block holds the CLI commands: buttons do that job here.
    blocks = blocks[:-1]
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"*Time left:* {time_left(request['expires_at'], now)}"}],
        }
    )
    buttons: list[dict[str, Any]] = [
        {
            "type": "button",
            "action_id": APPROVE_ACTION,
            "style": "primary",
            "text": {"type": "plain_text", "text": "Approve"},
            "value": request_id,
        },
        {
            "type": "button",
            "action_id": REJECT_ACTION,
            "style": "danger",
            "text": {"type": "plain_text", "text": "Reject"},
            "value": request_id,
        },
    ]
    url = render.request_url(payload, public_url)
    if url is not None:
        buttons.append(
            {
                "type": "button",
                "action_id": OPEN_ACTION,
                "text": {"type": "plain_text", "text": "Open in inbox"},
                "url": url,
            }
        )
    blocks.append({"type": "actions", "block_id": f"hitl_{request_id}"[:255], "elements": buttons})
    return {"text": body["text"], "blocks": blocks}


def mrkdwn(value: str, limit: int = 2900) -> str:
    """Agent or human text shown as itself in mrkdwn: hidden characters as escapes, `&`, `<`, `>` as
    entities (so no <!channel> ping, no disguised link)."""
    shown = display.clip(display.visible(value), limit)
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def reason_modal(request_id: str, summary: str, where: dict[str, str]) -> dict[str, Any]:
    """The modal Reject opens; `private_metadata` carries the request and where to answer a refusal.
    `summary` is the request's, as the agent wrote it."""
    return {
        "type": "modal",
        "callback_id": REJECT_CALLBACK,
        "private_metadata": json.dumps({"request_id": request_id, **where}),
        "title": {"type": "plain_text", "text": "Reject request"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn(summary)}},
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Why is it rejected?"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": REASON_LIMIT,
                },
            },
        ],
    }

"""A notification's words, from the snapshot taken when its event happened: text, webhook JSON, Slack.

Every message says what is asked (the summary), what it would do (the preview), who must decide, when it
expires, and — while the request waits — the exact commands that approve or reject it. The summary and
the preview come from the agent and a decision's reason from a human: they are shown as data (escaped
for Slack, on their own lines for text), never as part of the instructions around them. In the text and
Slack forms, every character that could change how the rest reads (bidi overrides, controls, U+2028…) is
shown as an escape such as `\\u202e` (see `hitl_mcp.display`); the webhook's JSON fields are data, as sent.
With `[web] public_url` set, every form also links to the request's page in the inbox.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from hitl_mcp import display
from hitl_mcp.notify import notice

SLACK_SECTION_LIMIT = 3000
SLACK_HEADER_LIMIT = 150
PREVIEW_TEXT_LIMIT = 4000
SUBJECT_LIMIT = 200


def commands(payload: dict[str, Any]) -> dict[str, str]:
    """The CLI commands a reader can run now: approve and reject while the request waits, show always."""
    request = payload["request"]
    request_id = request["request_id"]
    found = {"show": f"hitl show {request_id}"}
    if request["status"] == "pending":
        found["approve"] = f"hitl approve {request_id}"
        found["reject"] = f'hitl reject {request_id} --reason "…"'
    return found


def request_url(payload: dict[str, Any], public_url: str | None) -> str | None:
    """The request's page in the inbox, when the inbox's public address is configured."""
    if not public_url:
        return None
    return f"{public_url.rstrip('/')}/requests/{payload['request']['request_id']}"


def _level(approval: dict[str, Any], index: int) -> str:
    return f"level {index + 1} of {approval['levels']}"


def headline(payload: dict[str, Any]) -> str:
    """One line saying what happened to which request."""
    event = payload["event"]
    actor = payload["actor"]
    request = payload["request"]
    approval = request["approval"]
    tool = request["tool"]
    short = request["request_id"][:10]
    waiting_on = approval["waiting_on"]
    if event == "filed":
        return f"Approval needed: {tool} request {short} from {request['requested_by']}"
    if event == "escalated":
        level = "" if waiting_on is None else f" at {_level(approval, waiting_on)}"
        return f"Escalated: {tool} request {short} still waits{level}"
    if event == "approved":
        if waiting_on is not None:
            return f"Approved by {actor}: {tool} request {short} now waits on {_level(approval, waiting_on)}"
        return f"Approved by {actor}: {tool} request {short} runs now"
    if event == "rejected":
        return f"Rejected by {actor}: {tool} request {short} will not run"
    if event == "executed":
        return f"Executed: {tool} request {short}"
    if event == "failed":
        return f"Failed: {tool} request {short}"
    if event == "expired":
        return f"Expired without a decision: {tool} request {short}"
    if event == "cancelled":
        return f"Cancelled by {actor}: {tool} request {short}"
    if event == "granted":
        return f"Ran under grant {payload['details'].get('grant', '')}: {tool} request {short}"
    return f"{event}: {tool} request {short}"


def _preview_text(preview: Any) -> str:
    # Readable non-ASCII text, but nothing raw that could reorder or hide the rest (JSON leaves U+202E).
    return display.clip(
        json.dumps(preview, indent=2, sort_keys=True, ensure_ascii=False), PREVIEW_TEXT_LIMIT, lines=True
    )


def facts(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The labelled lines every format shows, in order."""
    request = payload["request"]
    approval = request["approval"]
    details = payload.get("details") or {}
    status = request["status"] + (
        " (escalated)" if approval["escalated"] and request["status"] == "pending" else ""
    )
    lines = [
        ("Request", request["request_id"]),
        ("Tool", request["tool"]),
        ("Summary", request["summary"]),
        ("Status", status),
        ("Requested", f"by {request['requested_by']} at {request['created_at']}"),
    ]
    if approval["may_decide"] is not None:
        lines.append(("Waits on", f"{_level(approval, approval['waiting_on'])}: {approval['may_decide']}"))
    lines.append(("Policy", approval["description"]))
    lines.append(("Expires", request["expires_at"]))
    if details.get("reason"):
        lines.append(("Note", f"from {payload['actor']}: {details['reason']}"))
    if request.get("error"):
        lines.append(("Error", request["error"]))
    lines.append(("Event", f"{payload['event']} by {payload['actor']} at {payload['at']}"))
    return lines


def text(payload: dict[str, Any], *, public_url: str | None = None) -> str:
    """The plain-text message (email body, and the webhook's `text`)."""
    if "notice" in payload:
        return notice.text(payload)
    out = [display.visible(headline(payload)), ""]
    out += [f"{label:<10} {display.visible(value)}" for label, value in facts(payload)]
    out += ["", "Preview:", _preview_text(payload["request"]["preview"]), ""]
    found = commands(payload)
    if "approve" in found:
        out += [f"Approve:  {found['approve']}", f"Reject:   {found['reject']}"]
    out.append(f"Details:  {found['show']}")
    url = request_url(payload, public_url)
    if url is not None:
        out.append(f"Open:     {url}")
    return "\n".join(out) + "\n"


def subject(payload: dict[str, Any]) -> str:
    """An email subject: the headline and summary on one line, with no control character in it.

    Characters that could change how the rest reads are shown escaped, as everywhere a person reads agent
    text; what escaping leaves of other spacing and unusual characters (Zs, Co) becomes a plain space."""
    if "notice" in payload:
        return notice.subject(payload)
    line = display.visible(f"[hitl] {headline(payload)}: {payload['request']['summary']}")
    line = "".join(" " if unicodedata.category(char)[0] in "CZ" and char != " " else char for char in line)
    return display.clip(line, SUBJECT_LIMIT)


def webhook_body(
    payload: dict[str, Any], delivery_id: int, *, public_url: str | None = None
) -> dict[str, Any]:
    """The generic webhook's JSON: the snapshot, the commands and the text, with the delivery's id (and the
    request page's `url` when the inbox's address is configured)."""
    if "notice" in payload:
        return notice.webhook_body(payload, delivery_id)
    url = request_url(payload, public_url)
    return {
        "delivery_id": delivery_id,
        "event": payload["event"],
        "at": payload["at"],
        "actor": payload["actor"],
        "details": payload.get("details") or {},
        "request": payload["request"],
        "commands": commands(payload),
        "text": text(payload, public_url=public_url),
        **({"url": url} if url is not None else {}),
    }


def _slack_escape(value: str) -> str:
    # Slack reads <…> as links and mentions (<!channel>); & must be escaped for the others to be literal.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_pieces(value: str, *, lines: bool = False) -> list[str]:
    # Escaped for Slack piece by piece, so that shortening never cuts an `&amp;` or a `\\u202e` in half.
    return [_slack_escape(piece) for piece in display.pieces(value, lines=lines)]


def slack_body(payload: dict[str, Any], *, public_url: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (notifications, fallback) and Block Kit `blocks`."""
    if "notice" in payload:
        return notice.slack_body(payload)
    facts_pieces: list[str] = []
    for label, value in facts(payload):
        if facts_pieces:
            facts_pieces.append("\n")
        facts_pieces += [f"*{label}:* ", *_slack_pieces(value)]
    preview_text = _preview_text(payload["request"]["preview"]).replace("```", "'''")
    # Slack's limits count characters; leave room for the label and the fences.
    preview = display.fit(_slack_pieces(preview_text, lines=True), SLACK_SECTION_LIMIT - 20)
    found = commands(payload)
    if "approve" in found:
        how = f"Approve: `{found['approve']}`\nReject: `{found['reject']}`"
    else:
        how = f"Details: `{found['show']}`"
    url = request_url(payload, public_url)
    if url is not None:
        how += f"\n<{_slack_escape(url)}|Open in the inbox>"
    title = headline(payload)
    return {
        "text": "".join(_slack_pieces(f"{title}: {payload['request']['summary']}")),
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": display.clip(title, SLACK_HEADER_LIMIT)},
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": display.fit(facts_pieces, SLACK_SECTION_LIMIT)},
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Preview*\n```{preview}```"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": how}},
        ],
    }

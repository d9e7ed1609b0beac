"""Notifications about no request: an upstream's tool that changed after hitl first served it
(`tool-changed`). The same three forms as a request's message (text, webhook JSON, Slack), built from the
snapshot `Routing.route_notice` takes. Names and descriptions come from the upstream: shown as data, with
every character that could change how the rest reads escaped, as in `render`.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from hitl_mcp import display
from hitl_mcp.notify import grant_notice
from hitl_mcp.notify.grant_notice import GRANT_NOTICES

NOTICE_EVENTS = frozenset({"tool-changed", *GRANT_NOTICES})
SLACK_SECTION_LIMIT = 3000
SLACK_HEADER_LIMIT = 150
SUBJECT_LIMIT = 200


def snapshot(event: str, actor: str, at: str, details: dict[str, Any], audit_seq: int) -> dict[str, Any]:
    """What a notice says, as JSON-ready data: `notice` where a request's message has `request`."""
    return {
        "event": event,
        "at": at,
        "actor": actor,
        "audit_seq": audit_seq,
        "details": details,
        "notice": grant_notice.notice_of(details)
        if event in GRANT_NOTICES
        else {
            "upstream": str(details.get("upstream", "")),
            "tool": str(details.get("exposed_as", "")),
            "changed": [str(part) for part in details.get("changed", ())],
            "decision": str(details.get("decision", "")),
            "why": str(details.get("why", "")),
            "held": details.get("held") is True,
        },
    }


def headline(payload: dict[str, Any]) -> str:
    if payload["event"] in GRANT_NOTICES:
        return grant_notice.headline(payload)
    notice = payload["notice"]
    return f"Tool changed: {notice['tool']} (upstream {notice['upstream']})"


def facts(payload: dict[str, Any]) -> list[tuple[str, str]]:
    if payload["event"] in GRANT_NOTICES:
        return grant_notice.facts(payload)
    notice = payload["notice"]
    now = "gated, held: the upstream cannot loosen its own gate" if notice["held"] else notice["decision"]
    return [
        ("Upstream", notice["upstream"]),
        ("Tool", notice["tool"]),
        ("Changed", ", ".join(notice["changed"]) + " (after hitl first served it)"),
        ("Now", f"{now} ({notice['why']})"),
        ("Event", f"{payload['event']} by {payload['actor']} at {payload['at']}"),
    ]


HOW = "hitl upstreams"
ACCEPT = "to accept the tool as it is now, change the upstream's rules (a pass pattern) and restart"


def _how(payload: dict[str, Any]) -> str:
    return grant_notice.HOW if payload["event"] in GRANT_NOTICES else HOW


def text(payload: dict[str, Any]) -> str:
    out = [display.visible(headline(payload)), ""]
    out += [f"{label:<10} {display.visible(value)}" for label, value in facts(payload)]
    out += ["", f"Check:    {_how(payload)}"]
    if payload["notice"].get("held"):
        out.append(f"Accept:   {ACCEPT}")
    return "\n".join(out) + "\n"


def subject(payload: dict[str, Any]) -> str:
    line = display.visible(f"[hitl] {headline(payload)}")
    line = "".join(" " if unicodedata.category(char)[0] in "CZ" and char != " " else char for char in line)
    return display.clip(line, SUBJECT_LIMIT)


def webhook_body(payload: dict[str, Any], delivery_id: int) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "event": payload["event"],
        "at": payload["at"],
        "actor": payload["actor"],
        "details": payload.get("details") or {},
        "notice": payload["notice"],
        "text": text(payload),
    }


def _slack_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(payload: dict[str, Any]) -> dict[str, Any]:
    lines = [f"*{label}:* {_slack_escape(display.visible(value))}" for label, value in facts(payload)]
    lines.append(f"Check: `{_how(payload)}`")
    title = display.visible(headline(payload))
    return {
        "text": _slack_escape(title),
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": display.clip(title, SLACK_HEADER_LIMIT)},
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": display.clip("\n".join(lines), SLACK_SECTION_LIMIT)},
            },
        ],
    }

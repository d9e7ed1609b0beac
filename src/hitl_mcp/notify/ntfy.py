"""`[[notify]] ntfy = "https://ntfy.example.com/TOPIC"`: a push to an ntfy server, whose phone apps show
the message with action buttons.

Published as JSON to the server's root (ntfy's "publish as JSON"): the topic, a title, a plain-text
message (the summary and the time left), `click` and a **View** action opening the request's page. For an
entry bound to one principal (`principal = "alice"`), while that principal may decide the waiting level,
**Approve** and **Reject** are `view` actions too, opening alice's own single-use link page
(`notify.links`): a tap never decides by itself — never an `http` action — so a high-risk call is always
read on the page before it is decided. Agent text is plain text with every hidden or reordering character
shown escaped (`display.visible`), and clipped to ntfy's limits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hitl_mcp import display
from hitl_mcp.notify import render

TITLE_LIMIT = 250
MESSAGE_LIMIT = 3000


def endpoint(topic_url: str) -> tuple[str, str]:
    """The server root to publish to, and the topic: `https://host/base/TOPIC` → (`https://host/base/`,
    `TOPIC`)."""
    parts = urlsplit(topic_url)
    base, _, topic = parts.path.rstrip("/").rpartition("/")
    return urlunsplit((parts.scheme, parts.netloc, base + "/", "", "")), topic


def time_left(payload: dict[str, Any], now: float) -> str:
    from hitl_mcp.web.rendering import duration  # the inbox's wording of a span

    left = datetime.fromisoformat(payload["request"]["expires_at"]).timestamp() - now
    return duration(left) if left > 0 else "none (expired)"


def body(
    payload: dict[str, Any],
    topic_url: str,
    *,
    now: float,
    request_url: str | None,
    decide_url: str | None,
) -> dict[str, Any]:
    """The JSON to publish. `decide_url`: the bound principal's link page, when they may decide."""
    _, topic = endpoint(topic_url)
    request = payload["request"]
    lines = [display.visible(request["summary"])]
    if request["status"] == "pending":
        lines.append(f"Time left: {time_left(payload, now)} (expires {request['expires_at']})")
    if request["approval"]["may_decide"] is not None:
        lines.append(f"Waits on: {display.visible(request['approval']['may_decide'])}")
    published: dict[str, Any] = {
        "topic": topic,
        "title": display.clip(render.headline(payload), TITLE_LIMIT),
        "message": display.clip("\n".join(lines), MESSAGE_LIMIT, lines=True),
        "tags": ["hitl", request["status"]],
    }
    actions: list[dict[str, Any]] = []
    if request_url is not None:
        published["click"] = request_url
        actions.append({"action": "view", "label": "View", "url": request_url})
    if decide_url is not None:
        # `view`: the phone opens the page; an `http` action would decide with one tap, unread.
        actions.append({"action": "view", "label": "Approve", "url": f"{decide_url}#approve"})
        actions.append({"action": "view", "label": "Reject", "url": f"{decide_url}#reject"})
    if actions:
        published["actions"] = actions
    return published

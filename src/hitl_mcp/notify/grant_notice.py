"""What a notification about a grant says (`grant-created`, `grant-revoked`): a notice about no request,
rendered by `notice` in the same three forms as an upstream's changed tool. The scope and the reason are
people's text, shown as data like every other value a message carries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

GRANT_NOTICES = frozenset({"grant-created", "grant-revoked"})
HOW = "hitl grants list"
TITLES = {"grant-created": "Grant made", "grant-revoked": "Grant revoked"}


def notice_of(details: dict[str, Any]) -> dict[str, Any]:
    """The `notice` of a grant's audit record (`store.grants.grant_details`)."""
    expires = details.get("expires_at")
    uses = details.get("uses")
    return {
        "grant": str(details.get("grant", "")),
        "tool": str(details.get("tool", "")),
        "requester": str(details.get("requester", "")),
        "scope": "any arguments" if details.get("any_arguments") else f"when {details.get('when', '')}",
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat() if isinstance(expires, float) else "",
        "uses": "any number" if uses is None else str(uses),
        "state": str(details.get("state", "")),
        "approved_by": [str(name) for name in details.get("approved_by", ())],
        "reason": str(details.get("reason") or ""),
    }


def headline(payload: dict[str, Any]) -> str:
    notice = payload["notice"]
    title = TITLES.get(payload["event"], payload["event"])
    return f"{title}: {notice['tool']} from {notice['requester']} ({notice['grant']})"


def facts(payload: dict[str, Any]) -> list[tuple[str, str]]:
    notice = payload["notice"]
    found = [
        ("Scope", f"{notice['tool']} from {notice['requester']}, {notice['scope']}"),
        ("Expires", notice["expires_at"]),
        ("Uses", notice["uses"]),
        ("Approved", ", ".join(notice["approved_by"]) or "-"),
    ]
    if notice["state"] == "waiting":
        found.append(("Waits", f"on further levels: hitl grants approve {notice['grant']}"))
    if notice["reason"]:
        found.append(("Reason", notice["reason"]))
    found.append(("Event", f"{payload['event']} by {payload['actor']} at {payload['at']}"))
    return found

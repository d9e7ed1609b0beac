"""Which notifiers hear of an event, and what their message will say — decided inside the transition.

The store calls `Routing.route` from its audit hook, in the transition's own transaction, with the request
as that transaction leaves it. Each matching notifier gets one outbox row holding a snapshot: what the
message needs (summary, preview, who must decide, expiry, the commands), fixed now, so a later change of
the request never rewrites an earlier notification. No I/O here beyond what the caller does with the
result.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hitl_mcp.models import Request, Status, utc
from hitl_mcp.notify import notice
from hitl_mcp.notify.notice import NOTICE_EVENTS
from hitl_mcp.notify.settings import Notifier


@dataclass(frozen=True)
class OutboxEntry:
    """One outbox row to insert: for the notifier `notifier` (its key), the message snapshot `payload`."""

    notifier: str
    channel: str
    label: str
    payload: str


class Routing:
    """The configured notifiers, with the set of events any of them wants (checked before any work)."""

    def __init__(self, notifiers: Iterable[Notifier]) -> None:
        self.notifiers = tuple(notifiers)
        self.events = frozenset(event for notifier in self.notifiers for event in notifier.hears)

    def wants(self, event: str) -> bool:
        return event in self.events

    def route(
        self, event: str, request: Request, actor: str, at: float, details: dict[str, Any], audit_seq: int
    ) -> list[OutboxEntry]:
        # `filed` tells someone a request waits for them; one the policy let through at once waits on
        # nobody (its `executed` or `failed` is still sent).
        if event == "filed" and request.status is not Status.PENDING:
            return []
        levels = levels_in_question(request)
        matching = [n for n in self.notifiers if n.matches(event, request.tool, levels)]
        if not matching:
            return []
        payload = json.dumps(
            snapshot(event, request, actor, at, details, audit_seq), sort_keys=True, ensure_ascii=False
        )
        entries: dict[str, OutboxEntry] = {}
        for notifier in matching:
            # Entries naming one target share a row: a receiver hears of one event once.
            entries.setdefault(
                notifier.key, OutboxEntry(notifier.key, notifier.channel, notifier.label, payload)
            )
        return list(entries.values())

    def entries_for(
        self,
        event: str,
        request: Request | None,
        actor: str,
        at: float,
        details: dict[str, Any],
        audit_seq: int,
    ) -> list[OutboxEntry]:
        """`route` for an event of a request; `route_notice` for one of none (`request` None)."""
        if request is not None:
            return self.route(event, request, actor, at, details, audit_seq)
        return self.route_notice(event, actor, at, details, audit_seq)

    def route_notice(
        self, event: str, actor: str, at: float, details: dict[str, Any], audit_seq: int
    ) -> list[OutboxEntry]:
        """The outbox rows of an event about no request (`tool-changed`); none for any other event."""
        if event not in NOTICE_EVENTS:
            return []
        # An upstream's changed tool names it as exposed; a grant names the tool it covers.
        tool = str(details.get("exposed_as") or details.get("tool") or "")
        matching = [n for n in self.notifiers if n.matches(event, tool, ())]
        payload = json.dumps(
            notice.snapshot(event, actor, utc(at).isoformat(), details, audit_seq),
            sort_keys=True,
            ensure_ascii=False,
        )
        entries: dict[str, OutboxEntry] = {}
        for notifier in matching:
            entries.setdefault(
                notifier.key, OutboxEntry(notifier.key, notifier.channel, notifier.label, payload)
            )
        return list(entries.values())


def levels_in_question(request: Request) -> list[tuple[int, tuple[str, ...]]]:
    """The level a pending request waits on; every level of its policy once it waits on none."""
    approval = request.approval
    levels = approval.policy.levels
    if request.status is Status.PENDING and approval.waiting_on is not None:
        return [(approval.waiting_on, levels[approval.waiting_on].roles)]
    return [(index, level.roles) for index, level in enumerate(levels)]


def snapshot(
    event: str, request: Request, actor: str, at: float, details: dict[str, Any], audit_seq: int
) -> dict[str, Any]:
    """Everything a message about this event says, as JSON-ready data."""
    approval = request.approval
    waiting = request.status is Status.PENDING and approval.waiting_on is not None
    return {
        "event": event,
        "at": utc(at).isoformat(),
        "actor": actor,
        "audit_seq": audit_seq,
        "details": details,
        "request": {
            "request_id": request.request_id,
            "tool": request.tool,
            "status": request.status.value,
            "summary": request.summary,
            "preview": request.preview,
            "arguments": request.arguments,
            "requested_by": request.requested_by,
            "created_at": request.created_at.isoformat(),
            "expires_at": request.expires_at.isoformat(),
            "approval": {
                "description": approval.description,
                "levels": len(approval.policy.levels),
                "waiting_on": approval.waiting_on if waiting else None,
                # The number people read ("level 1"), beside the index into the levels above.
                "waiting_on_level": approval.waiting_on_level if waiting else None,
                "may_decide": approval.may_decide if waiting else None,
                "escalated": approval.escalated,
                "approved_by": approval.approved_by,
            },
            "result": request.result,
            "error": request.error,
        },
    }

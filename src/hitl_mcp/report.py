"""What the audit trail says about how requests fare: outcomes per tool, approval rate, time to decision.

Everything is computed from audit records alone, so the figures agree with the trail `hitl audit verify`
vouches for. `build` defines the figures as one pass in seq order (testable on records made up by hand);
`from_store` has the store count the same figures with its own SQL, which is what the faces call.
A report covers the requests *filed* in its window (all of their records, however late), so that every
rate and duration is over the same set of requests.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from hitl_mcp.audit import AuditRecord, read_records
from hitl_mcp.models import utc

if TYPE_CHECKING:
    import sqlite3

    from hitl_mcp.store import Store

_ISO_TIME = TypeAdapter(datetime)
# The status a request is in after each event. `approved` is not here: under a quorum one approval may
# leave the request pending, and the record says which (`details.status`). Events absent from this table
# (edited, escalated, and any added later) do not move the status but are still counted.
STATUS_AFTER = {
    "filed": "pending",
    "policy-auto-approved": "approved",
    # A standing approval (a grant) covered the call: it ran without waiting on anyone.
    "granted": "approved",
    # The requester's person said yes through their client (approval = "confirm"): consent, no decision.
    "confirmed": "approved",
    "rejected": "rejected",
    "claimed": "executing",
    "retried": "approved",
    "executed": "executed",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
    "denied": "denied",
    # A call an upstream's rules forward at once: no request, but the trail and the report show it.
    "passed": "passed",
}
# The order a person reads outcomes in: still open first, then how they ended.
OUTCOME_ORDER = (
    "pending",
    "approved",
    "executing",
    "executed",
    "failed",
    "rejected",
    "denied",
    "passed",
    "expired",
    "cancelled",
)
DECISIONS = ("approved", "rejected")
# Events about no request (an upstream's tool that changed, a token made or revoked): counted among events,
# never as a request. A passed call's `pass-outcome` shares its `passed` record's id but is a notice too, so
# an archive cut that falls between the two never leaves a request behind that the report would count.
NOTICES = frozenset(
    {
        "tool-changed",
        "token-made",
        "token-revoked",
        "grant-created",
        "grant-approved",
        "grant-revoked",
        "pass-outcome",
    }
)
UNKNOWN_TOOL = "(unknown)"


@dataclass
class _Progress:
    """What one pass needs to remember about a request; kept small, one per request in the window."""

    tool: str
    status: str
    filed_at: float | None
    verdict: str | None = None
    decided: bool = False
    escalated: bool = False
    expired: bool = False


@dataclass(frozen=True)
class Report:
    since: float | None
    tools: dict[str, dict[str, int]]
    """Per tool, how many requests are in each status now."""
    approved: int
    """Requests a human approved (every level of a quorum), whatever happened to them afterwards."""
    rejected: int
    auto_approved: int
    """Requests the policy approved without a human; not counted in the approval rate."""
    decision_seconds_p50: float | None
    decision_seconds_p95: float | None
    decisions_timed: int
    """Requests whose time from filing to their first human decision went into the percentiles."""
    approvers: dict[str, dict[str, int]]
    """Per principal, how many approve and reject decisions it made (each quorum vote counts)."""
    expired: int
    escalated: int
    """Requests escalated at least once."""
    events: dict[str, int] = field(default_factory=dict)
    """Every event present in the window, by name."""

    @property
    def requests(self) -> int:
        return sum(sum(outcomes.values()) for outcomes in self.tools.values())

    @property
    def outcomes(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for outcomes in self.tools.values():
            total.update(outcomes)
        return ordered(total)

    @property
    def grants(self) -> dict[str, int]:
        """Standing approvals made, calls they covered, and those revoked, in the window."""
        events = self.events
        return {
            "made": events.get("grant-created", 0),
            "used": events.get("granted", 0),
            "revoked": events.get("grant-revoked", 0),
        }

    @property
    def decided(self) -> int:
        return self.approved + self.rejected

    @property
    def approval_rate(self) -> float | None:
        return self.approved / self.decided if self.decided else None

    def to_json(self) -> dict[str, Any]:
        return {
            # ISO 8601 like every other time hitl prints as JSON, in pydantic's own spelling.
            "since": None if self.since is None else _ISO_TIME.dump_python(utc(self.since), mode="json"),
            "requests": self.requests,
            "outcomes": self.outcomes,
            "tools": {tool: {"requests": sum(o.values()), "outcomes": o} for tool, o in self.tools.items()},
            "approval": {
                "approved": self.approved,
                "rejected": self.rejected,
                "decided": self.decided,
                "rate": self.approval_rate,
            },
            "auto_approved": self.auto_approved,
            "time_to_decision": {
                "requests": self.decisions_timed,
                "p50_seconds": self.decision_seconds_p50,
                "p95_seconds": self.decision_seconds_p95,
            },
            "approvers": self.approvers,
            "expired": self.expired,
            "escalated": self.escalated,
            "grants": self.grants,
            "events": self.events,
        }


def build(records: Iterable[AuditRecord], since: float | None = None) -> Report:
    """The report over `records` in seq order, for requests filed at or after `since` (all when None)."""
    tally = _Tally(since)
    for record in records:
        tally.add(record)
    return tally.report()


async def build_stream(records: AsyncIterable[AuditRecord], since: float | None = None) -> Report:
    """`build` over records streamed from a store."""
    tally = _Tally(since)
    async for record in records:
        tally.add(record)
    return tally.report()


async def from_store(store: Store, since: float | None = None) -> Report:
    """The report over a store's whole audit trail, counted by the store's own SQL in one read snapshot
    (`store/report_sql.py`): the same figures as `build` over the same records, without a Python pass over
    each of them."""
    rows = await store.report_rows(since)
    tools: dict[str, Counter[str]] = {}
    for tool, status, count in rows.outcomes:
        tools.setdefault(tool, Counter())[status] += count
    approvers: dict[str, dict[str, int]] = {}
    for actor, event, count in rows.approvers:
        approvers.setdefault(actor, dict.fromkeys(DECISIONS, 0))[event] += count
    events = dict(sorted(rows.events))
    return Report(
        since=since,
        tools={tool: ordered(tools[tool]) for tool in sorted(tools)},
        approved=rows.approved,
        rejected=rows.rejected,
        auto_approved=events.get("policy-auto-approved", 0),
        decision_seconds_p50=rows.percentiles[50],
        decision_seconds_p95=rows.percentiles[95],
        decisions_timed=rows.timed,
        approvers={name: approvers[name] for name in sorted(approvers)},
        expired=rows.expired,
        escalated=rows.escalated,
        events=events,
    )


class _Tally:
    """One pass over the trail in seq order: what each request in the window has come to."""

    def __init__(self, since: float | None) -> None:
        self.since = since
        self.progress: dict[str, _Progress] = {}
        # Requests filed before the window: their later records are skipped, not mistaken for new requests.
        self.earlier: set[str] = set()
        self.approvers: dict[str, Counter[str]] = {}
        self.events: Counter[str] = Counter()
        self.auto_approved = 0
        self.waits: list[float] = []

    def add(self, record: AuditRecord) -> None:
        request_id, event = record.request_id, record.event
        if event in NOTICES:
            if self.since is None or record.at >= self.since:
                self.events[event] += 1
            return
        state = self.progress.get(request_id)
        if state is None:
            if request_id in self.earlier:
                return
            if self.since is not None and record.at < self.since:
                self.earlier.add(request_id)
                return
            tool = _details(record).get("tool")
            state = self.progress[request_id] = _Progress(
                tool=tool if isinstance(tool, str) and tool else UNKNOWN_TOOL,
                status=STATUS_AFTER.get(event, "pending"),
                filed_at=record.at if event == "filed" else None,
            )
        self.events[event] += 1

        if event in DECISIONS:
            # A requester's "no" to its own confirm question is no approver's decision.
            if not _details(record).get("confirmation"):
                self.approvers.setdefault(record.actor, Counter())[event] += 1
            if not state.decided and state.filed_at is not None:
                self.waits.append(record.at - state.filed_at)
            state.decided = True
            if event == "rejected":
                state.verdict = "rejected"
                state.status = "rejected"
            else:
                # One vote of a quorum leaves the request pending; only the last one approves it.
                status = _details(record).get("status")
                state.status = status if isinstance(status, str) and status else "approved"
                if state.status != "pending" and state.verdict is None:
                    state.verdict = "approved"
        elif event in STATUS_AFTER:
            state.status = STATUS_AFTER[event]
        if event == "policy-auto-approved":
            self.auto_approved += 1
        elif event == "escalated":
            state.escalated = True
        elif event == "expired":
            state.expired = True

    def report(self) -> Report:
        progress, approvers = self.progress, self.approvers
        tools: dict[str, Counter[str]] = {}
        for state in progress.values():
            tools.setdefault(state.tool, Counter())[state.status] += 1
        waits = sorted(self.waits)
        return Report(
            since=self.since,
            tools={tool: ordered(tools[tool]) for tool in sorted(tools)},
            approved=sum(1 for s in progress.values() if s.verdict == "approved"),
            rejected=sum(1 for s in progress.values() if s.verdict == "rejected"),
            auto_approved=self.auto_approved,
            decision_seconds_p50=percentile(waits, 50),
            decision_seconds_p95=percentile(waits, 95),
            decisions_timed=len(waits),
            approvers={
                name: {event: approvers[name][event] for event in DECISIONS} for name in sorted(approvers)
            },
            expired=sum(1 for s in progress.values() if s.expired),
            escalated=sum(1 for s in progress.values() if s.escalated),
            events=dict(sorted(self.events.items())),
        )


def from_connection(conn: sqlite3.Connection, since: float | None = None) -> Report:
    """The report over an open SQLite store connection's trail (for callers holding one); `from_store`
    reads any store."""
    return build(read_records(conn), since)


def percentile(ordered_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values: always a value that occurred, never an interpolation."""
    if not ordered_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered_values)))
    return ordered_values[rank - 1]


def ordered(counts: Counter[str]) -> dict[str, int]:
    """Counts in reading order: the known outcomes first, in lifecycle order, then any others by name."""
    known = [name for name in OUTCOME_ORDER if counts.get(name)]
    others = sorted(name for name in counts if name not in OUTCOME_ORDER and counts[name])
    return {name: counts[name] for name in (*known, *others)}


def _details(record: AuditRecord) -> dict[str, Any]:
    # A report reads a trail it does not vouch for: a record whose details were mangled counts without
    # them rather than stopping the report.
    try:
        details = json.loads(record.details)
    except (TypeError, ValueError):
        return {}
    return details if isinstance(details, dict) else {}

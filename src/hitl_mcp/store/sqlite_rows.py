"""Rows of the SQLite store as the records the gate reads."""

from __future__ import annotations

import functools
import json
import sqlite3
from typing import TYPE_CHECKING, Any

from hitl_mcp.models import ApprovalState, Decision, Request, Status, approval_state, utc
from hitl_mcp.policy import Approver, Snapshot

# SUMMARY_COLUMNS is re-exported: the PostgreSQL store reads the same columns.
from hitl_mcp.queue_rows import SUMMARY_COLUMNS as SUMMARY_COLUMNS
from hitl_mcp.queue_rows import summary_line

if TYPE_CHECKING:
    from hitl_mcp.store import NewRequest

REQUEST_COLUMNS = (
    "seq, id, tool, arguments, arguments_digest, summary, preview, status, requested_by, "
    "created_at, expires_at, updated_at, result, error, policy, level, escalated_level, original_arguments, "
    "claimed_by, target, effect"
)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fetch(conn: sqlite3.Connection, request_id: str) -> Request | None:
    row = conn.execute(f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        return None
    return request_of(row, decisions_of(conn, [request_id]).get(request_id, []))


def decisions_of(conn: sqlite3.Connection, request_ids: list[str]) -> dict[str, list[Decision]]:
    if not request_ids:
        return {}
    found: dict[str, list[Decision]] = {}
    placeholders = ", ".join("?" for _ in request_ids)
    for request_id, principal, verdict, reason, decided_at, roles, level, edit in conn.execute(
        f"SELECT request_id, principal, verdict, reason, decided_at, roles, level, edit FROM decisions "
        f"WHERE request_id IN ({placeholders}) ORDER BY rowid",
        request_ids,
    ):
        found.setdefault(request_id, []).append(
            Decision(
                principal=principal,
                verdict=verdict,
                reason=reason,
                decided_at=utc(decided_at),
                roles=json.loads(roles),
                level_index=level,
                changes=None if edit is None else json.loads(edit),
            )
        )
    return found


@functools.lru_cache(maxsize=1024)
def snapshot_of(policy: str) -> Snapshot:
    return Snapshot.model_validate_json(policy)


@functools.lru_cache(maxsize=1024)
def _undecided(policy: str, escalated: bool) -> ApprovalState:
    return approval_state(snapshot_of(policy), [], escalated=escalated)


def shared_approval(
    policy: str, decisions: list[Decision], level: int, escalated_level: int | None
) -> ApprovalState:
    """A row's approval state. An undecided one is shared by every request under the same rule: read it,
    never change it (`approval_of` gives one of the record's own)."""
    escalated = escalated_level is not None and escalated_level == level
    if decisions:
        return approval_state(snapshot_of(policy), decisions, escalated=escalated)
    return _undecided(policy, escalated)


def approval_of(
    policy: str, decisions: list[Decision], level: int, escalated_level: int | None
) -> ApprovalState:
    state = shared_approval(policy, decisions, level, escalated_level)
    return state if decisions else state.model_copy()  # a copy: callers may keep and change it


def summary_of(row: sqlite3.Row | tuple[Any, ...], decisions: list[Decision]) -> dict[str, Any]:
    """A row of SUMMARY_COLUMNS as the JSON form of its `RequestSummary` (`queue_rows.summary_line`)."""
    return summary_line(
        row, [Approver(d.principal, tuple(d.roles)) for d in decisions if d.verdict == "approve"]
    )


def filed_of(request: NewRequest, status: Status, policy: str) -> Request:
    """The record `request` becomes once inserted with `status` (its policy stored as `policy`), without
    reading it back: nothing else can have written it inside the inserting transaction."""
    return Request.model_construct(
        request_id=request.request_id,
        tool=request.tool,
        arguments=request.arguments,
        arguments_digest=request.arguments_digest,
        status=status,
        summary=request.summary,
        preview=request.preview,
        requested_by=request.requested_by,
        created_at=utc(request.created_at),
        expires_at=utc(request.expires_at),
        updated_at=utc(request.created_at),
        decisions=[],
        approval=approval_of(policy, [], 0, None),
        original_arguments=None,
        result=None,
        error=None,
        claimed_by=None,
        claimed_at=None,
        target=None if request.target is None else json.loads(request.target),
        effect=None,
        outcome_unknown=False,
    )


def request_of(row: sqlite3.Row | tuple[Any, ...], decisions: list[Decision]) -> Request:
    (
        _seq,
        request_id,
        tool,
        arguments,
        digest,
        summary,
        preview,
        status,
        requested_by,
        created_at,
        expires_at,
        updated_at,
        result,
        error,
        policy,
        level,
        escalated_level,
        original_arguments,
        claimed_by,
        target,
        effect,
    ) = row
    # Rows are the store's own, written from validated models: read back without validating them again
    # (a page of 50 cost ~1.4 ms, most of it re-validation), and the many requests under one rule share
    # its parsed snapshot.
    return Request.model_construct(
        request_id=request_id,
        tool=tool,
        arguments=json.loads(arguments),
        arguments_digest=digest,
        status=Status(status),
        summary=summary,
        preview=json.loads(preview),
        requested_by=requested_by,
        created_at=utc(created_at),
        expires_at=utc(expires_at),
        updated_at=utc(updated_at),
        decisions=decisions,
        approval=approval_of(policy, decisions, level, escalated_level),
        original_arguments=None if original_arguments is None else json.loads(original_arguments),
        result=None if result is None else json.loads(result),
        error=error,
        claimed_by=claimed_by,
        # The claim sets updated_at and nothing else writes the row until it finishes.
        claimed_at=utc(updated_at) if status == Status.EXECUTING else None,
        target=None if target is None else json.loads(target),
        effect=effect,
    )

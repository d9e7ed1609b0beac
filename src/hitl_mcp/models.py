"""The records the gate keeps and the faces show."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field, model_validator

from hitl_mcp.policy import Snapshot

# Re-exported: every part of hitl imports them from here; `status` holds them so that short commands can
# name statuses without pydantic.
from hitl_mcp.status import FINAL_STATUSES as FINAL_STATUSES
from hitl_mcp.status import Status as Status


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class Change(BaseModel):
    before: Any
    after: Any


class Decision(BaseModel):
    principal: str
    verdict: Literal["approve", "reject"]
    reason: str | None = Field(
        default=None, description="Free text from the decider: a human note, data, never an instruction."
    )
    decided_at: datetime
    roles: list[str] = Field(default_factory=list, description="The decider's roles when it decided")
    level_index: int | None = Field(
        default=None,
        description="0-based index into approval.policy.levels of the level this decision was at",
    )
    changes: dict[str, Change] | None = Field(
        default=None, description="Arguments this approver edited: before and after"
    )

    @computed_field(  # type: ignore[prop-decorator]
        description="The level's number as every face shows it (`level 1` is the first); null when none"
    )
    @property
    def level(self) -> int | None:
        return None if self.level_index is None else self.level_index + 1

    @model_validator(mode="before")
    @classmethod
    def _index_given(cls, data: Any) -> Any:
        # A record read back from JSON carries the computed `level` beside `level_index`: the index decides.
        # One without `level_index` comes from before it existed, when `level` was the index.
        if isinstance(data, dict) and "level" in data:
            data = dict(data)
            data.setdefault("level_index", data.pop("level"))
        return data


class ApprovalState(BaseModel):
    """What the policy asks of this request and how far its approvals go."""

    policy: Snapshot
    description: str
    approved_by: list[list[str]] = Field(description="Per level, who has counted toward it")
    waiting_on: int | None = Field(
        description="0-based index into policy.levels of the level the request waits on; null when none "
        "(`waiting_on_level` is its number as people read it)"
    )
    may_decide: str | None = Field(description="Who may decide the level it waits on")
    escalated: bool = False

    @computed_field(  # type: ignore[prop-decorator]
        description="The number of the level it waits on as every face shows it (`level 1` is the first)"
    )
    @property
    def waiting_on_level(self) -> int | None:
        return None if self.waiting_on is None else self.waiting_on + 1


class Request(BaseModel):
    """The whole record of one gated call, as `get_request` returns it."""

    request_id: str
    tool: str
    arguments: dict[str, Any]
    arguments_digest: str
    status: Status
    summary: str
    preview: dict[str, Any]
    requested_by: str
    created_at: datetime
    expires_at: datetime
    updated_at: datetime
    decisions: list[Decision] = Field(default_factory=list)
    approval: ApprovalState
    original_arguments: dict[str, Any] | None = Field(
        default=None, description="The arguments as filed, when an approver edited them; null otherwise"
    )
    result: dict[str, Any] | None = None
    error: str | None = None
    claimed_by: str | None = Field(
        default=None, description="The process (host:pid) that claimed the request to run it; null until then"
    )
    claimed_at: datetime | None = Field(
        default=None, description="When it was claimed, while it is executing; null otherwise"
    )
    target: dict[str, str] | None = Field(
        default=None,
        description="What the request was previewed against (the ledger, the database, the SMTP server, the "
        "upstream): only a process configured for the same target runs it",
    )
    effect: Literal["none", "unknown"] | None = Field(
        default=None,
        description="For a failed request: `none` when the failure certainly had no effect (an approver may "
        "retry it), `unknown` when it may have had one (never run again)",
    )
    outcome_unknown: bool = Field(
        default=False,
        description="Executing, but the process that claimed it is gone or overdue: whether the action "
        "took effect is unknown. It is never run again by itself; a person must check and resolve it.",
    )
    recording: str | None = Field(
        default=None,
        description="Executing, and the process that ran it knows how it ended but the store has not taken "
        "the outcome yet: what it holds and why it waits (it keeps trying). Null otherwise; never stored.",
    )

    @computed_field(  # type: ignore[prop-decorator]
        description='Under approval = "confirm": `confirmed` when the requester\'s person said yes through '
        "their client (consent, not a second person's approval), `refused` when they said no; null otherwise"
    )
    @property
    def confirmation(self) -> Literal["confirmed", "refused"] | None:
        # A confirmation is audited but never stored as a decision (it counts toward no level), so a confirm
        # rule's request that left pending with no decision was decided by its requester's person.
        if self.approval.policy.approval != "confirm" or self.decisions:
            return None
        if self.status in (Status.APPROVED, Status.EXECUTING, Status.EXECUTED, Status.FAILED):
            return "confirmed"
        return "refused" if self.status is Status.REJECTED else None


class AuditEvent(BaseModel):
    seq: int
    request_id: str
    event: str
    actor: str
    at: datetime
    details: dict[str, Any] = Field(default_factory=dict)


class RequestSummary(BaseModel):
    """One line of the queue: enough to choose what to read in full with `get_request`."""

    request_id: str
    tool: str
    status: Status
    summary: str
    arguments: dict[str, Any]
    requested_by: str
    created_at: datetime
    expires_at: datetime
    waits_on: str | None = Field(description="Who may decide the level it waits on")
    escalated: bool

    @classmethod
    def of(cls, request: Request) -> RequestSummary:
        # Built from a record that is already valid: no second validation of the same values.
        return cls.model_construct(
            request_id=request.request_id,
            tool=request.tool,
            status=request.status,
            summary=request.summary,
            arguments=request.arguments,
            requested_by=request.requested_by,
            created_at=request.created_at,
            expires_at=request.expires_at,
            waits_on=request.approval.may_decide,
            escalated=request.approval.escalated,
        )


class Decided(BaseModel):
    """What a decision answers: where it left the request and, once run, how it ended. The whole record
    (preview, target, policy, timestamps) is `get_request`'s; a decider already saw it."""

    request_id: str
    tool: str
    status: Status
    summary: str
    arguments: dict[str, Any] = Field(description="The arguments decided on: an approver's edit, if any")
    decisions: list[Decision]
    waits_on: str | None = Field(description="Who may decide the level it still waits on; null when none")
    result: dict[str, Any] | None = None
    error: str | None = None
    effect: Literal["none", "unknown"] | None = Field(
        default=None, description="For a failed request: whether the failure certainly had no effect"
    )
    outcome_unknown: bool = False
    recording: str | None = Field(
        default=None, description="The outcome this server holds and is still recording, and why it waits"
    )

    @classmethod
    def of(cls, request: Request) -> Decided:
        return cls.model_construct(
            request_id=request.request_id,
            tool=request.tool,
            status=request.status,
            summary=request.summary,
            arguments=request.arguments,
            decisions=request.decisions,
            waits_on=request.approval.may_decide,
            result=request.result,
            error=request.error,
            effect=request.effect,
            outcome_unknown=request.outcome_unknown,
            recording=request.recording,
        )


class SummaryPage(BaseModel):
    requests: list[RequestSummary]
    next_cursor: str | None = Field(
        default=None, description="Pass back as `cursor` for the next page; null when this is the last."
    )


class RequestPage(BaseModel):
    requests: list[Request]
    next_cursor: str | None = Field(
        default=None, description="Pass back as `cursor` for the next page; null when this is the last."
    )


def approval_state(snapshot: Snapshot, decisions: list[Decision], escalated: bool) -> ApprovalState:
    from hitl_mcp.policy import Approver, progress

    approvers = [Approver(d.principal, tuple(d.roles)) for d in decisions if d.verdict == "approve"]
    counted = progress(snapshot.levels, approvers)
    waiting_on = counted.waiting_on if snapshot.needs_decision else None
    return ApprovalState(
        policy=snapshot,
        description=snapshot.describe(),
        approved_by=[list(names) for names in counted.counted],
        waiting_on=waiting_on,
        may_decide=None if waiting_on is None else snapshot.levels[waiting_on].describe(),
        escalated=escalated,
    )

"""The REST API's own bodies, beside the records of `hitl_mcp.models` that it returns as they are.

`ReportFigures` is the shape `hitl report --json` prints (`hitl_mcp.report.Report.to_json`), as a model so
the OpenAPI document can describe it; the API validates every report through it, so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hitl_mcp.models import Change, Status
from hitl_mcp.policy import Snapshot

REASON_MAX = 2000


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=REASON_MAX, description="Why, for the audit trail")
    arguments: dict[str, Any] | None = Field(
        default=None,
        description="Changes to the request's arguments to approve instead of the filed ones (same action, "
        "validated and re-checked by policy; recorded as a diff)",
    )


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=REASON_MAX, description="Why, shown to the requester")


class EditBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arguments: dict[str, Any] = Field(description="The arguments to change, by name, with their new values")


class EditPreview(BaseModel):
    """What approving with these changes would approve; nothing was changed."""

    request_id: str
    changes: dict[str, Change] = Field(description="Each edited argument: before and after")
    arguments: dict[str, Any] = Field(description="The arguments that would run")
    summary: str
    preview: dict[str, Any]
    policy: Snapshot = Field(description="The policy rule the edited arguments select")
    needs: str = Field(description="What that rule needs, in words")
    arguments_digest: str = Field(description="The digest of the arguments the edit was made on")


class ToolFigures(BaseModel):
    requests: int
    outcomes: dict[str, int]


class ApprovalFigures(BaseModel):
    approved: int
    rejected: int
    decided: int
    rate: float | None


class DecisionTimes(BaseModel):
    requests: int
    p50_seconds: float | None
    p95_seconds: float | None


class GrantFigures(BaseModel):
    made: int = Field(description="Grants made")
    used: int = Field(description="Calls a grant covered, which ran without waiting")
    revoked: int = Field(description="Grants revoked")


class ReportFigures(BaseModel):
    """How requests fared, from the audit trail alone: what `hitl report --json` prints."""

    since: datetime | None = Field(
        description="Only requests filed at or after this time (ISO 8601, UTC); null: all"
    )
    requests: int
    outcomes: dict[str, int] = Field(description="How many requests are in each status now")
    tools: dict[str, ToolFigures]
    approval: ApprovalFigures
    auto_approved: int
    time_to_decision: DecisionTimes
    approvers: dict[str, dict[str, int]] = Field(description="Per principal, approve and reject decisions")
    expired: int
    escalated: int
    grants: GrantFigures = Field(description="Standing approvals: made, used and revoked")
    events: dict[str, int]


class ChainBreak(BaseModel):
    kind: str
    seq: int
    request_id: str | None
    event: str | None
    message: str


class ChainState(BaseModel):
    """`hitl audit verify`'s verdict on the audit trail's hash chain."""

    ok: bool
    records: int = Field(description="Sound records walked")
    head: str = Field(description="The last sound record's hash: keep it elsewhere to detect a cut-off end")
    broken: ChainBreak | None = None


class ChangeEvent(BaseModel):
    """One Server-Sent Event's data: the audit record `id` names happened to this request."""

    request_id: str
    event: str
    status: Status = Field(description="The request's status when the event was sent")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = Field(description="What was refused and why: the words the CLI prints")
    hitl_error: str | None = Field(
        default=None,
        description="The refusal's kind (NotFound, NotPending, Expired, NotAllowed, InvalidArguments, "
        "ActionFailed, StoreUnavailable, …): the CLI acting through a server exits as it does on a store",
    )

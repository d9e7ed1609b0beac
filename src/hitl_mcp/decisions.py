"""The rules of one decision: who may decide, what an approval counts for, and where it leaves the request.

`plan` is pure: the store runs it inside the transaction that applies it, on the request as it stands
then, so the rules are judged on exactly the state they change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from hitl_mcp.config import fold_principal
from hitl_mcp.errors import Expired, NotAllowed, NotPending
from hitl_mcp.models import Request, Status
from hitl_mcp.policy import Approver, Snapshot, check_eligible, progress
from hitl_mcp.store import DecisionPlan, Edit


def escalation_time(snapshot: Snapshot, waiting_on: int | None, since: float) -> float | None:
    if waiting_on is None:
        return None
    after = snapshot.levels[waiting_on].escalate_after_seconds
    return None if after is None else since + after


def plan(
    request: Request,
    *,
    principal: str,
    roles: Sequence[str],
    verdict: Literal["approve", "reject"],
    reason: str | None,
    edit: Edit | None,
    now: float,
    shown: str | None = None,
) -> DecisionPlan:
    """`shown`: the digest of the arguments the decider was shown, when the face knows it (a decision link is
    bound to one): a decision on other arguments is refused inside the decision's own transaction."""
    request_id = request.request_id
    if request.status is not Status.PENDING:
        raise NotPending(f"request {request_id} is {request.status}, not pending; nothing was changed")
    if request.expires_at.timestamp() <= now:
        raise Expired(f"request {request_id} expired at {request.expires_at.isoformat()}; it will never run")
    # Folded on both sides: records written before names were folded keep the spelling they were given.
    me = fold_principal(principal)
    if fold_principal(request.requested_by) == me:
        raise NotAllowed(
            f"{principal} filed request {request_id}; a principal may not decide its own request"
        )
    if any(fold_principal(decision.principal) == me for decision in request.decisions):
        raise NotAllowed(f"{principal} has already decided request {request_id}; a principal counts once")
    if edit is not None and edit.based_on_digest != request.arguments_digest:
        raise NotPending(f"request {request_id} was edited by someone else meanwhile; read it again")
    if shown is not None and shown != request.arguments_digest:
        raise NotPending(
            f"request {request_id} was edited since you were shown it; nothing was changed: read it again"
        )

    snapshot = request.approval.policy
    waiting_on = request.approval.waiting_on
    if waiting_on is not None:
        check_eligible(snapshot, waiting_on, principal, roles, request_id)

    if verdict == "reject":
        return DecisionPlan(
            principal=principal,
            verdict=verdict,
            reason=reason,
            roles=tuple(roles),
            level=waiting_on,
            status=Status.REJECTED,
            waiting_on=None,
            escalate_at=None,
        )

    # An edit is judged by the policy its new arguments select; approvals already given still count.
    target = edit.policy if edit is not None else snapshot
    approvers = [Approver(d.principal, tuple(d.roles)) for d in request.decisions if d.verdict == "approve"]
    approvers.append(Approver(principal, tuple(roles)))
    after = progress(target.levels, approvers)
    complete = after.complete or target.approval == "none"
    level = next((i for i, names in enumerate(after.counted) if principal in names), None)
    moved = edit is not None or after.waiting_on != waiting_on
    return DecisionPlan(
        principal=principal,
        verdict=verdict,
        reason=reason,
        roles=tuple(roles),
        level=level,
        status=Status.APPROVED if complete else Status.PENDING,
        waiting_on=None if complete else after.waiting_on,
        escalate_at=None if complete else escalation_time(target, after.waiting_on, now),
        # Still waiting on the same level: its escalation clock keeps running from where it started.
        keep_escalation=not complete and not moved,
        edit=edit,
    )


def plan_confirmation(
    request: Request,
    *,
    principal: str,
    accepted: bool,
    reason: str | None,
    now: float,
    digest: str | None = None,
) -> DecisionPlan:
    """The requester's own yes or no through their client, allowed only where the request's rule says
    `approval = "confirm"`: consent, recorded apart from decisions, so it never fills a level (invariant 4
    holds for every other rule)."""
    request_id = request.request_id
    if request.status is not Status.PENDING:
        raise NotPending(f"request {request_id} is {request.status}, not pending; nothing was changed")
    if request.expires_at.timestamp() <= now:
        raise Expired(f"request {request_id} expired at {request.expires_at.isoformat()}; it will never run")
    if request.approval.policy.approval != "confirm":
        raise NotAllowed(
            f"request {request_id}'s rule does not ask its requester to confirm; it waits on "
            f"{request.approval.may_decide or 'its approvers'}"
        )
    if fold_principal(request.requested_by) != fold_principal(principal):
        raise NotAllowed(
            f"request {request_id} was filed by {request.requested_by}; only its requester confirms it"
        )
    if digest is not None and digest != request.arguments_digest:
        raise NotPending(f"request {request_id} was edited since the question was asked; nothing was changed")
    return DecisionPlan(
        principal=principal,
        verdict="approve" if accepted else "reject",
        reason=reason,
        roles=(),
        level=None,
        status=Status.APPROVED if accepted else Status.REJECTED,
        waiting_on=None,
        escalate_at=None,
        confirmation=True,
    )

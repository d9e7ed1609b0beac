"""Grants kept in the store, so every server on it honours a new one, and stops honouring a revoked one,
from the next call on.

A grant's changes are audited on its own trail (its id), beside the requests': `grant-created`,
`grant-approved`, `grant-revoked`. Each use is spent in the transaction that files the call it covers
(`Store.insert` with `NewRequest.grant`), audited `granted` on that request's trail: N racing calls spend
N uses and no more, however many processes make them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from hitl_mcp.grants import Grant

GrantPlanner = Callable[[Grant], Grant]
"""Judges a grant as it stands inside the transaction and returns it changed, or raises to refuse."""

COLUMNS = (
    "id, tool, requester, when_expr, any_arguments, created_by, created_at, expires_at, uses, uses_left, "
    "uses_made, state, approvers, needs, reason, revoked_by, revoked_at"
)


def grant_details(grant: Grant) -> dict[str, Any]:
    """What a grant's audit records say of it."""
    return {
        "grant": grant.id,
        "tool": grant.tool,
        "requester": grant.requester,
        "when": grant.when,
        "any_arguments": grant.any_arguments,
        "expires_at": grant.expires_at,
        "uses": grant.uses,
        "state": grant.state,
        "approved_by": [approver.principal for approver in grant.approvers],
        **({"reason": grant.reason} if grant.reason else {}),
    }


@runtime_checkable
class GrantStore(Protocol):
    """What the gate needs of grants; part of the SQLite and PostgreSQL stores."""

    async def grant_insert(self, grant: Grant) -> Grant:
        """Store a new grant with its `grant-created` audit record."""

    async def grant_get(self, grant_id: str) -> Grant | None: ...

    async def grant_list(self, include_finished: bool, now: float) -> list[Grant]:
        """Grants oldest first: those waiting or active (unexpired, with uses left), or every one."""

    async def grant_candidates(self, tool: str, requester: str, now: float) -> list[Grant]:
        """The active, unexpired grants with uses left for `tool` and `requester` (folded), oldest first."""

    async def grant_change(
        self, grant_id: str, plan: GrantPlanner, event: str, actor: str, now: float
    ) -> Grant:
        """Apply `plan(grant as it stands)` in one transaction, with its `event` audit record; the plan
        raises to refuse. NotFound when there is no such grant."""

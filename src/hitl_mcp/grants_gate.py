"""The gate's side of grants: making, approving, revoking and listing them, and filing a call one covers.

Kept beside the Gate rather than in it: the Gate asks `covering` for a call its policy would make wait and
files through `file`; every rule is `hitl_mcp.grants`'s, every write one transaction of the store's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from hitl_mcp import grants
from hitl_mcp.config import Settings
from hitl_mcp.errors import NotFound
from hitl_mcp.grants import GRANT_APPROVED, GRANT_REVOKED, Grant, GrantUnavailable
from hitl_mcp.models import Request
from hitl_mcp.policy import Snapshot
from hitl_mcp.store import NewRequest, Store
from hitl_mcp.store.grants import GrantStore

if TYPE_CHECKING:
    from hitl_mcp.actions import Action


class GateGrants:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Callable[[], float],
        roles_of: Callable[[str, Sequence[str]], tuple[str, ...]],
    ) -> None:
        # A store without grants (a test's stand-in) files every call as its policy says.
        self._store = store if isinstance(store, GrantStore) else None
        self._requests = store
        self.settings = settings
        self.clock = clock
        self.roles_of = roles_of

    @property
    def store(self) -> GrantStore:
        if self._store is None:
            raise NotFound("this store keeps no grants")
        return self._store

    async def add(
        self,
        action: Action,  # type: ignore[type-arg]
        tool: str,
        requester: str,
        when: str | None,
        any_arguments: bool,
        expires_in: timedelta,
        uses: int | None,
        reason: str | None,
        by: str,
        roles: Sequence[str] = (),
    ) -> Grant:
        requester = grants.check_requester(requester, by)
        when = grants.check_scope(when, any_arguments, action.policy_names())
        lifetime = grants.check_expiry(expires_in.total_seconds(), self.settings.grants.max_seconds)
        uses = grants.check_uses(uses)
        reason = grants.check_reason(reason)
        needs = grants.needs(self.settings.policies.get(tool))
        held = self.roles_of(by, roles)
        approvers, state = grants.plan_creation(needs_found=needs, by=by, roles=held, tool=tool)
        now = self.clock()
        grant = Grant(
            id=grants.new_grant_id(),
            tool=tool,
            requester=requester,
            when=when,
            any_arguments=when is None,
            created_by=by,
            created_at=now,
            expires_at=now + lifetime,
            uses=uses,
            uses_left=uses,
            uses_made=0,
            state=state,
            approvers=approvers,
            needs=needs,
            reason=reason,
        )
        return (await self.store.grant_insert(grant)).at(now)

    async def approve(self, ref: str, by: str, roles: Sequence[str] = ()) -> Grant:
        held = self.roles_of(by, roles)
        now = self.clock()
        changed = await self.store.grant_change(
            grants.check_id(ref),
            lambda grant: grants.plan_approval(grant, by=by, roles=held, now=now),
            GRANT_APPROVED,
            by,
            now,
        )
        return changed.at(now)

    async def revoke(self, ref: str, by: str, roles: Sequence[str] = ()) -> Grant:
        held = self.roles_of(by, roles)
        now = self.clock()
        changed = await self.store.grant_change(
            grants.check_id(ref),
            lambda grant: grants.plan_revocation(grant, by=by, roles=held, now=now),
            GRANT_REVOKED,
            by,
            now,
        )
        return changed.at(now)

    async def listed(self, include_finished: bool = False) -> list[Grant]:
        now = self.clock()
        return [grant.at(now) for grant in await self.store.grant_list(include_finished, now)]

    async def get(self, ref: str) -> Grant:
        grant_id = grants.check_id(ref)
        found = await self.store.grant_get(grant_id)
        if found is None:
            raise NotFound(f"no grant has id {grant_id!r}")
        return found.at(self.clock())

    async def covering(
        self, tool: str, requester: str, values: Mapping[str, object], snapshot: Snapshot, now: float
    ) -> list[str]:
        """The grants that cover this call, best first: those counting uses before those that do not,
        so a grant of any number of uses is not spent on what a counted one was made for."""
        if self._store is None or not snapshot.needs_decision:
            return []
        found = [
            grant
            for grant in await self._store.grant_candidates(tool, requester, now)
            if grants.covers(grant, tool=tool, requester=requester, values=values, snapshot=snapshot, now=now)
        ]
        found.sort(key=lambda grant: (grant.uses_left is None, grant.expires_at))
        return [grant.id for grant in found]

    async def file(self, new: NewRequest, covering: Sequence[str]) -> Request:
        """Insert `new` under the first grant that still covers it when its transaction runs (one use
        spent there), or as its policy says when none does any longer."""
        for grant_id in covering:
            granted = replace(
                new, policy=grants.granted_snapshot(new.policy, grant_id), grant=grant_id, escalate_at=None
            )
            try:
                return await self._requests.insert(granted)
            except GrantUnavailable:
                continue  # revoked, expired or used up since it was read: the next one, or none
        return await self._requests.insert(new)

"""Single-use decision links (an email's Approve / Reject link) kept in the store.

Only the SHA-256 of a link's token is stored, bound to the request, the recipient and the arguments'
digest the message showed. Spending a link is one conditional write (`used_at` set only where it is still
unset and unexpired), so two POSTs racing with one link spend it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class LinkToken:
    sha256: str
    request_id: str
    principal: str
    arguments_digest: str
    created_at: float
    expires_at: float
    used_at: float | None = None


@runtime_checkable
class LinkStore(Protocol):
    """What the link pages and the notifiers that mint links need; part of the SQLite and PostgreSQL
    stores."""

    async def link_insert(self, link: LinkToken) -> None: ...

    async def link_find(self, sha256: str) -> LinkToken | None:
        """The link with this digest, used or expired ones too (the page says why it no longer works)."""

    async def link_spend(self, sha256: str, now: float) -> bool:
        """Mark the link used; False when it was used already, expired, or is unknown."""

    async def link_prune(self, expired_before: float) -> int:
        """Forget links that expired before `expired_before`; returns how many."""

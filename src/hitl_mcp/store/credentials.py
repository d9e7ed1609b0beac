"""Bearer tokens and inbox sessions kept in the store, so every server on it honours them at once.

Only SHA-256 digests of the secrets are stored: a token's and a session cookie's. Reading the store gives
away no credential. Tokens are made and revoked with an audit record (`token-made`, `token-revoked`) on
the token's own trail (its id), beside the requests'; sessions come and go too often to be audited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hitl_mcp.errors import InvalidArguments

TOKEN_MADE = "token-made"  # noqa: S105 (an audit event's name)
TOKEN_REVOKED = "token-revoked"  # noqa: S105
# A label a person reads in `hitl token list` and types to revoke: no spaces, no markup.
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


def check_token_name(name: str, field: str = "name") -> str:
    if not TOKEN_NAME.match(name):
        raise InvalidArguments(
            f"{field}: {name[:80]!r} is not a token name: 1 to 64 letters, digits and . _ @ + -, starting "
            "with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class NewToken:
    id: str
    name: str
    principal: str
    roles: tuple[str, ...]
    sha256: str
    created_at: float
    created_by: str
    expires_at: float | None


@dataclass(frozen=True)
class StoredToken:
    """A token as listed: everything but the secret, which is stored nowhere."""

    id: str
    name: str
    principal: str
    roles: tuple[str, ...]
    created_at: float
    created_by: str
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class StoredSession:
    principal: str
    roles: tuple[str, ...]
    csrf: str
    id_token: str | None
    created_at: float
    last_seen_at: float
    expires_at: float


@runtime_checkable
class CredentialStore(Protocol):
    """What the verifier, the inbox and `hitl token` need; part of the SQLite and PostgreSQL stores."""

    async def token_insert(self, token: NewToken) -> StoredToken:
        """Store a token with its `token-made` audit record; InvalidArguments when a token not revoked
        already has its name."""

    async def token_find(self, sha256: str, now: float) -> StoredToken | None:
        """The live (unrevoked, unexpired) token with this digest, or None."""

    async def token_used(self, token_id: str, now: float) -> None:
        """Record when a token was last used."""

    async def token_list(self, principal: str | None = None) -> list[StoredToken]:
        """Every token (of `principal`, when given), revoked ones too, oldest first."""

    async def token_revoke(
        self, ref: str, actor: str, now: float, *, principal: str | None = None
    ) -> StoredToken | None:
        """Revoke the token whose id is `ref`, or the unrevoked one named `ref` (only `principal`'s when
        given), with its `token-revoked` audit record; None when there is none to revoke."""

    async def token_count(self, now: float) -> int:
        """How many live tokens there are."""

    async def live_token_exists(self, now: float) -> bool:
        """Whether any live token exists. A tokenless server asks this for every request it admits, so
        each store answers it without a round trip where it can: SQLite on its watch connection, PostgreSQL
        from its last answer until a token is made or revoked anywhere (announced on the change feed)."""

    async def session_insert(self, sha256: str, session: StoredSession) -> None: ...

    async def session_find(self, sha256: str, now: float, idle_seconds: float) -> StoredSession | None:
        """The session, unless it expired or went unused for `idle_seconds`."""

    async def session_touch(self, sha256: str, now: float) -> None: ...

    async def session_delete(self, sha256: str) -> bool: ...

    async def session_prune(self, now: float, idle_seconds: float) -> int:
        """Forget expired and idle sessions; returns how many."""

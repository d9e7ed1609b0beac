"""Bearer tokens: made at random, stored only as their SHA-256. Kept apart from the MCP SDK so the CLI
can make one without importing the server.

A token made here is kept in the store (`hitl_mcp.store.credentials`): every server on the store honours
it at once, and `hitl token revoke` or the inbox's Tokens page ends it at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from hitl_mcp.errors import InvalidArguments
from hitl_mcp.store.credentials import CredentialStore, NewToken, StoredToken, check_token_name

TOKEN_BYTES = 32
DEFAULT_EXPIRY = "90d"
_DURATION = re.compile(r"^(\d{1,6})([dhm])$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60}
MAX_EXPIRY_SECONDS = 10 * 365 * 86400
ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+:-]{0,63}$")


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_expiry(text: str, field: str = "--expires") -> float | None:
    """Seconds until a token expires, from `90d`, `12h` or `30m`; None for `never`."""
    text = text.strip().lower()
    if text == "never":
        return None
    matched = _DURATION.match(text)
    seconds = int(matched[1]) * _UNIT_SECONDS[matched[2]] if matched else 0
    if not matched or not 0 < seconds <= MAX_EXPIRY_SECONDS:
        raise InvalidArguments(
            f"{field}: {text[:40]!r} is not a lifetime: a number of days, hours or minutes (90d, 12h, "
            "30m) of at most ten years, or never"
        )
    return float(seconds)


def parse_roles(text: str, field: str = "--roles") -> tuple[str, ...]:
    roles = tuple(dict.fromkeys(role.strip() for role in text.split(",") if role.strip()))
    for role in roles:
        if not ROLE.match(role):
            raise InvalidArguments(
                f"{field}: {role[:80]!r} is not a role name: letters, digits and . _ @ + : -, comma-separated"
            )
    return roles


async def make_token(
    store: CredentialStore,
    principal: str,
    *,
    name: str | None,
    roles: tuple[str, ...],
    lifetime: float | None,
    created_by: str,
    now: float,
) -> tuple[str, StoredToken]:
    """Make a token for `principal` and store its digest: the secret, to show once, and the stored row."""
    token_id = f"tok_{secrets.token_hex(6)}"
    name = check_token_name(name) if name else f"{principal}-{token_id[4:]}"
    secret = new_token()
    stored = await store.token_insert(
        NewToken(
            id=token_id,
            name=name,
            principal=principal,
            roles=roles,
            sha256=token_sha256(secret),
            created_at=now,
            created_by=created_by,
            expires_at=None if lifetime is None else now + lifetime,
        )
    )
    return secret, stored

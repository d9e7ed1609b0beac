"""Bearer tokens: made at random, stored only as their SHA-256. Kept apart from the MCP SDK so the CLI
can make one without importing the server."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

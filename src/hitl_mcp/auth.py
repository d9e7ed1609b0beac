"""Who calls over HTTP: a bearer token names a principal through the SHA-256 its `[principals.NAME]` keeps.

The config file holds only hashes, so reading it gives away no credential; a token itself is shown once, by
`hitl token new`. The SDK's bearer middleware calls `PrincipalTokens.verify_token` for every request to the
MCP endpoint, refuses unknown tokens with 401, binds each HTTP session to the token that opened it, and
carries the token into the handler's context, where `authenticated_principal` reads it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken

from hitl_mcp.config import Settings, check_distinct_tokens, check_principal
from hitl_mcp.errors import ConfigError
from hitl_mcp.tokens import token_sha256


class PrincipalTokens:
    """The SDK's `TokenVerifier` over the configured hashes: a known token's principal, or None."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        """`hashes` maps each principal to the SHA-256 hex of its token; one token names one principal.

        `load_settings` refuses a shared token already; this holds for verifiers built any other way too.
        Principals are kept in their normal form, the one every other face compares."""
        check_distinct_tokens(hashes)
        self._hashes = tuple(
            (check_principal(principal, f"principals.{principal}"), digest)
            for principal, digest in hashes.items()
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> PrincipalTokens | None:
        hashes = {name: p.token_sha256 for name, p in settings.principals.items() if p.token_sha256}
        return cls(hashes) if hashes else None

    @property
    def principals(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._hashes)

    async def verify_token(self, token: str) -> AccessToken | None:
        digest = token_sha256(token)
        found: str | None = None
        for principal, expected in self._hashes:
            # Compare with every hash, in constant time, so response timing tells nothing about the hashes.
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        if found is None:
            return None
        # The session owner the SDK compares is (client_id, issuer, subject): the principal alone. The digest
        # stands in for the token so the raw secret is not kept in the request context.
        return AccessToken(token=digest, client_id=found, subject=found, scopes=[])


def authenticated_principal() -> str | None:
    """The principal whose bearer token authenticated the HTTP request being served; None off HTTP auth."""
    access = get_access_token()
    return access.client_id if access is not None else None


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only. Other names are not
    resolved: anything but a literal loopback address or `localhost` counts as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def http_tokens(settings: Settings, host: str) -> PrincipalTokens | None:
    """The tokens an HTTP server bound to `host` admits; None (no authentication) only on loopback."""
    tokens = PrincipalTokens.from_settings(settings)
    if tokens is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve HTTP on {host} without tokens: anyone who can reach it would act as "
            f"{settings.principal!r}; create one per principal with `hitl token new NAME` and add its "
            "[principals.NAME] token_sha256 to the config file, or bind a loopback address (--host 127.0.0.1)"
        )
    return tokens

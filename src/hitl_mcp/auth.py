"""Who calls over HTTP: a bearer token names a principal through its SHA-256, kept in the config file
(`[principals.NAME] token_sha256`) or in the store (`hitl token new`, `hitl_mcp.store.credentials`).

Neither place holds a token itself, so reading them gives away no credential; a token is shown once. The
SDK's bearer middleware calls `PrincipalTokens.verify_token` for every request to the MCP endpoint, refuses
unknown tokens with 401, binds each HTTP session to the token that opened it, and carries the token into
the handler's context, where `authenticated_principal` and `authenticated_roles` read it. The store is
asked on every request, so a token made or revoked on any server on the store counts at once.

A loopback server started with no token anywhere admits clients without one (`open_principal`), until the
first token is made: from then on every client needs one, as if the server had been started with it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken

from hitl_mcp.config import Settings, check_distinct_tokens, check_principal
from hitl_mcp.errors import ConfigError, HitlError, StoreUnavailable
from hitl_mcp.store.credentials import CredentialStore
from hitl_mcp.tokens import token_sha256

# A token's last use is written at most this often per server: a write per request would be a write per call.
USED_EVERY_SECONDS = 60.0
MCP_PATH = "/mcp"

logger = logging.getLogger(__name__)


class PrincipalTokens:
    """The SDK's `TokenVerifier` over the configured hashes: a known token's principal, or None."""

    def __init__(
        self,
        hashes: Mapping[str, str],
        *,
        open_principal: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`hashes` maps each principal to the SHA-256 hex of its token; one token names one principal.

        `load_settings` refuses a shared token already; this holds for verifiers built any other way too.
        Principals are kept in their normal form, the one every other face compares. With
        `open_principal`, a request without a token acts as it while no token exists (`admit_open`)."""
        check_distinct_tokens(hashes)
        self._hashes = tuple(
            (check_principal(principal, f"principals.{principal}"), digest)
            for principal, digest in hashes.items()
        )
        self.open_principal = open_principal
        # Stands in for the missing header of a tokenless request: random, so no client can send it itself.
        self._open_token = secrets.token_urlsafe(32) if open_principal is not None else None
        self.clock = clock
        self._store: CredentialStore | None = None
        self._recorded_use: dict[str, float] = {}
        # Set once a live token is seen: from then on this server admits no tokenless request, even when
        # every token is later revoked or expires (a restart decides afresh).
        self._closed = False

    def attach(self, store: object) -> None:
        """Honour the tokens kept in `store` too, from now on (the server's store, once it is open)."""
        self._store = store if isinstance(store, CredentialStore) else None

    @property
    def store(self) -> CredentialStore | None:
        return self._store

    def is_open_token(self, token: str) -> bool:
        return self._open_token is not None and hmac.compare_digest(token.encode(), self._open_token.encode())

    @classmethod
    def from_settings(cls, settings: Settings) -> PrincipalTokens | None:
        hashes = {name: p.token_sha256 for name, p in settings.principals.items() if p.token_sha256}
        return cls(hashes) if hashes else None

    @property
    def principals(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._hashes)

    async def verify_token(self, token: str) -> AccessToken | None:
        """The principal a token names, with the roles a stored token carries as its scopes; None for a
        token unknown, revoked or expired."""
        if self.is_open_token(token):
            return await self._open_access()
        digest = token_sha256(token)
        found: str | None = None
        for principal, expected in self._hashes:
            # Compare with every hash, in constant time, so response timing tells nothing about the hashes.
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        if found is not None:
            # The session owner the SDK compares is (client_id, issuer, subject): the principal alone. The
            # digest stands in for the token so the raw secret is not kept in the request context.
            return AccessToken(token=digest, client_id=found, subject=found, scopes=[])
        return await self._stored_access(digest)

    async def _stored_access(self, digest: str) -> AccessToken | None:
        # Looked up by its digest, which a UNIQUE index finds: no secret is compared in Python.
        if self._store is None:
            return None
        now = self.clock()
        try:
            stored = await self._store.token_find(digest, now)
        except StoreUnavailable as fault:
            # Not a refusal: the token may well be good. Every face answers this as the outage it is (503).
            raise StoreUnavailable(f"the bearer token cannot be checked now: {fault.reason}") from None
        if stored is None:
            return None
        if now - self._recorded_use.get(stored.id, 0.0) >= USED_EVERY_SECONDS:
            self._recorded_use[stored.id] = now
            try:
                await self._store.token_used(stored.id, now)
            except HitlError as error:
                logger.warning("the last use of token %s was not recorded: %s", stored.id, error)
        return AccessToken(
            token=digest,
            client_id=stored.principal,
            subject=stored.principal,
            scopes=list(stored.roles),
            expires_at=None if stored.expires_at is None else int(stored.expires_at),
        )

    async def admits_open(self) -> bool:
        """Whether a request without a token is admitted now (as `open_principal`)."""
        return await self._open_access() is not None

    async def _open_access(self) -> AccessToken | None:
        principal = self.open_principal
        if principal is None or self._hashes or self._closed:
            return None
        if self._store is not None:
            try:
                if await self._store.live_token_exists(self.clock()):
                    self._closed = True
                    return None
            except HitlError:
                return None
        stand_in = token_sha256(self._open_token or "")
        return AccessToken(token=stand_in, client_id=principal, subject=principal, scopes=[])

    def admit_open(self, app: Any) -> Any:
        """`app` (the server's ASGI app), where a request to the MCP endpoint without a token carries this
        verifier's stand-in for one: it acts as `open_principal` while no token exists, and gets 401 after."""
        if self._open_token is None:
            return app
        header = (b"authorization", f"Bearer {self._open_token}".encode())

        async def admitted(scope: Any, receive: Any, send: Any) -> None:
            path = scope.get("path", "") if scope["type"] == "http" else ""
            mcp = path == MCP_PATH or path.startswith(MCP_PATH + "/")
            if mcp and not any(name == b"authorization" for name, _ in scope["headers"]):
                scope = dict(scope, headers=[*scope["headers"], header])
            await app(scope, receive, send)

        return admitted


def authenticated_principal() -> str | None:
    """The principal whose bearer token authenticated the HTTP request being served; None off HTTP auth."""
    access = get_access_token()
    return access.client_id if access is not None else None


def authenticated_roles() -> tuple[str, ...]:
    """The roles the request's stored token carries, beside the config's for its principal."""
    access = get_access_token()
    return tuple(access.scopes) if access is not None else ()


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only. Other names are not
    resolved: anything but a literal loopback address or `localhost` counts as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def http_tokens(settings: Settings, host: str, *, stored: int = 0) -> PrincipalTokens | None:
    """The tokens an HTTP server bound to `host` admits — the config's, and the `stored` live tokens in its
    store; None (no authentication) only on loopback, when there are neither."""
    hashes = {name: p.token_sha256 for name, p in settings.principals.items() if p.token_sha256}
    if hashes or stored:
        return PrincipalTokens(hashes)
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to serve HTTP on {host} without tokens: anyone who can reach it would act as "
            f"{settings.principal!r}; create one per principal with `hitl token new NAME` (kept in the "
            "store), or bind a loopback address (--host 127.0.0.1)"
        )
    return None


def server_tokens(settings: Settings, host: str, *, stored: int = 0) -> PrincipalTokens:
    """The verifier of `hitl serve --http`: `http_tokens`, or — with none — one that admits clients
    without a token as the settings' principal until the first token is made."""
    tokens = http_tokens(settings, host, stored=stored)
    return tokens if tokens is not None else PrincipalTokens({}, open_principal=settings.principal)

"""Who is signed in to the inbox, and who calls the API.

The API takes the bearer tokens MCP takes (the config's `token_sha256` and the store's, `hitl_mcp.auth`). A
person signs in to the inbox with one of them and gets a session cookie. A server on loopback with no tokens
(what `make run` starts) makes one sign-in link for the OS user instead: a random token kept in memory
only, good until the server stops. Signing in always takes a button press, a POST: mail and chat
scanners open every link they see, and a GET must not sign them in.

With `[web.oidc]`, people sign in through the team's OpenID Provider (`hitl_mcp.web.sso`); the roles its
claim gives (or a stored token's) ride on the session. Sessions live in the store, keyed by the SHA-256 of
the cookie's value: a restart signs nobody out, every server on a shared store honours them, and signing
out deletes the row. They end after `session_idle_minutes` unused and `session_hours` in all.
Every state-changing form carries the session's CSRF token and must come from this origin; the cookie is
HttpOnly and SameSite=Strict, and Secure when the inbox is reached over https.
"""

from __future__ import annotations

import dataclasses
import getpass
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request as HttpRequest
from starlette.responses import Response

from hitl_mcp.auth import PrincipalTokens
from hitl_mcp.config import Settings, check_principal
from hitl_mcp.errors import ConfigError
from hitl_mcp.store.credentials import CredentialStore, StoredSession
from hitl_mcp.tokens import token_sha256
from hitl_mcp.web.problems import Refused
from hitl_mcp.web.sso import PENDING_SECONDS, SingleSignOn

SESSION_COOKIE = "hitl_session"
# Binds a sign-in begun at the OpenID Provider to the browser that began it. SameSite=Lax: the provider
# sends the browser back with a cross-site navigation, which a Strict cookie would not come with.
SSO_COOKIE = "hitl_sso"
CALLBACK_PATH = "/auth/callback"
LOGIN_COOKIE = "hitl_login"
LOGIN_COOKIE_SECONDS = 3600
# Sessions kept in memory (no store to keep them in): past this many, the ones closest to expiry give way.
MAX_SESSIONS = 10_000
# A session's last use is written at most this often: not a write per page.
SEEN_EVERY_SECONDS = 60.0
# Ended sessions are deleted from the store at a sign-in, at most this often per server.
PRUNE_EVERY_SECONDS = 3600.0
# Real tokens are URL-safe base64 (`hitl_mcp.tokens`); anything else is refused before it is hashed.
TOKEN_MAX = 512
SAFE_METHODS = frozenset({"GET", "HEAD"})


class InboxOff(Exception):
    """The inbox cannot be served safely as configured; the message says why and what to change.
    `principal_clash`: the OS user is the principal tokenless MCP clients act as, which another
    HITL_PRINCIPAL also resolves."""

    def __init__(self, message: str, *, principal_clash: bool = False) -> None:
        super().__init__(message)
        self.principal_clash = principal_clash


@dataclass(frozen=True)
class Session:
    principal: str
    csrf: str
    expires_at: float
    roles: tuple[str, ...] = ()
    """Roles the sign-in itself gave (an OpenID Provider's claim), beside the config's for the principal."""
    id_token: str | None = None
    """The provider's ID token, when signed in through it: the hint for signing out there too."""
    last_seen_at: float = 0.0


class SignIn:
    """The tokens that sign a principal in, and the sessions they opened."""

    def __init__(
        self,
        tokens: PrincipalTokens | None,
        *,
        link_principal: str | None = None,
        session_seconds: float = 12 * 3600,
        idle_seconds: float = 3600,
        public_url: str | None = None,
        sso: SingleSignOn | None = None,
        clock: Callable[[], float] = time.time,
        store: CredentialStore | None = None,
    ) -> None:
        """Sessions go to `store`, or else to the store `tokens` was attached to once the server's is
        open; in memory only when there is neither (a server without a store of credentials)."""
        self.tokens = tokens
        self.sso = sso
        self.link_principal = link_principal
        self.link_token = secrets.token_urlsafe(32) if link_principal is not None else None
        self.session_seconds = session_seconds
        self.idle_seconds = idle_seconds
        self._store = store
        self._pruned_at = float("-inf")
        self.public_url = public_url.rstrip("/") if public_url else None
        self.clock = clock
        self._sessions: dict[str, Session] = {}

    @classmethod
    def for_server(cls, settings: Settings, tokens: PrincipalTokens | None, base_url: str) -> SignIn:
        """Sign-in for `hitl serve --http` reached at `base_url`: the team's OpenID Provider when one is
        configured, and the configured tokens; or — with neither, which only a loopback server accepts — a
        link for the OS user. Never as the principal tokenless MCP clients act as: signed in as it, a
        person's approvals would be the agent's own."""
        hours, public_url = settings.web.session_hours, settings.web.public_url
        idle = settings.web.session_idle_minutes * 60
        if settings.web.oidc is not None:
            callback = f"{(public_url or base_url).rstrip('/')}{CALLBACK_PATH}"
            sso = SingleSignOn(settings.web.oidc, callback)
            return cls(
                tokens, session_seconds=hours * 3600, idle_seconds=idle, public_url=public_url, sso=sso
            )
        if tokens is not None and tokens.open_principal is None:
            return cls(tokens, session_seconds=hours * 3600, idle_seconds=idle, public_url=public_url)
        try:
            user = check_principal(getpass.getuser(), "your OS user name")
        except (ConfigError, OSError, KeyError) as error:
            raise InboxOff(f"{error}; configure tokens (hitl token new NAME) to sign in with one") from None
        if user == settings.principal:
            raise InboxOff(
                f"your OS user {user!r} is also HITL_PRINCIPAL, the principal MCP clients without a token "
                "act as: signed in as it, you would decide an agent's own requests. Set HITL_PRINCIPAL to "
                "another name, or configure tokens (hitl token new NAME)",
                principal_clash=True,
            )
        # Tokens made once this server runs sign in too, beside the link.
        return cls(
            tokens,
            link_principal=user,
            session_seconds=hours * 3600,
            idle_seconds=idle,
            public_url=public_url,
        )

    async def principal_of(self, token: str) -> str | None:
        """The principal `token` signs in, or None."""
        signed = await self.access_of(token)
        return signed[0] if signed is not None else None

    async def access_of(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        """The principal `token` signs in and the roles it carries (a stored token's), or None."""
        token = token.strip()
        if not token or len(token) > TOKEN_MAX or not token.isascii() or not token.isprintable():
            return None
        if self.link_token is not None and hmac.compare_digest(token.encode(), self.link_token.encode()):
            assert self.link_principal is not None
            return self.link_principal, ()
        if self.tokens is None or self.tokens.is_open_token(token):
            return None
        access = await self.tokens.verify_token(token)
        return (access.client_id, tuple(access.scopes)) if access is not None else None

    @property
    def store(self) -> CredentialStore | None:
        if self._store is not None:
            return self._store
        return self.tokens.store if self.tokens is not None else None

    # -- sessions ----------------------------------------------------------------------------------

    async def start(
        self, principal: str, *, roles: tuple[str, ...] = (), id_token: str | None = None
    ) -> tuple[str, Session]:
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(
            principal, secrets.token_urlsafe(32), now + self.session_seconds, roles, id_token, now
        )
        store = self.store
        if store is not None:
            if now - self._pruned_at >= PRUNE_EVERY_SECONDS:
                self._pruned_at = now
                await store.session_prune(now, self.idle_seconds)
            # Only the cookie's digest is stored: reading the store signs nobody in.
            await store.session_insert(
                token_sha256(session_id),
                StoredSession(principal, roles, session.csrf, id_token, now, now, session.expires_at),
            )
            return session_id, session
        if len(self._sessions) >= MAX_SESSIONS:
            self._prune(now)
        self._sessions[session_id] = session
        return session_id, session

    async def session_of(self, request: HttpRequest) -> Session | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id or len(session_id) > TOKEN_MAX:
            return None
        now = self.clock()
        store = self.store
        if store is not None:
            digest = token_sha256(session_id)
            stored = await store.session_find(digest, now, self.idle_seconds)
            if stored is None:
                return None
            if now - stored.last_seen_at >= SEEN_EVERY_SECONDS:
                await store.session_touch(digest, now)
            return Session(
                stored.principal,
                stored.csrf,
                stored.expires_at,
                stored.roles,
                stored.id_token,
                stored.last_seen_at,
            )
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= now or session.last_seen_at <= now - self.idle_seconds:
            self._sessions.pop(session_id, None)
            return None
        if now - session.last_seen_at >= SEEN_EVERY_SECONDS:
            self._sessions[session_id] = dataclasses.replace(session, last_seen_at=now)
        return session

    async def end(self, request: HttpRequest) -> None:
        session_id = request.cookies.get(SESSION_COOKIE) or ""
        store = self.store
        if store is not None and session_id:
            await store.session_delete(token_sha256(session_id))
        self._sessions.pop(session_id, None)

    def _prune(self, now: float) -> None:
        for session_id, session in list(self._sessions.items()):
            if session.expires_at <= now or session.last_seen_at <= now - self.idle_seconds:
                del self._sessions[session_id]
        while len(self._sessions) >= MAX_SESSIONS:
            soonest = min(self._sessions, key=lambda key: self._sessions[key].expires_at)
            del self._sessions[soonest]

    # -- the API -----------------------------------------------------------------------------------

    async def api_principal(self, request: HttpRequest) -> str:
        return (await self.api_caller(request))[0]

    async def api_caller(self, request: HttpRequest) -> tuple[str, tuple[str, ...]]:
        """The caller of an API request: its bearer token's principal. A signed-in browser may read (the
        inbox's live updates come from `/api/v1/events`) but never change anything without a token, so the
        API needs no CSRF defence. Anything else is refused with 401."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            signed = await self.access_of(token) if scheme.lower() == "bearer" else None
            if signed is None:
                raise Refused(401, "the bearer token is not one this server knows; nothing was done")
            return signed
        if request.method in SAFE_METHODS and (session := await self.session_of(request)) is not None:
            return session.principal, session.roles
        raise Refused(
            401,
            "this call needs Authorization: Bearer TOKEN, a principal's token (see `hitl token new`); "
            "nothing was done",
        )

    # -- cookies and forms ---------------------------------------------------------------------------

    def secure(self, request: HttpRequest) -> bool:
        """Whether cookies are sent over https only: the inbox is reached over https."""
        public = self.public_url is not None and self.public_url.startswith("https://")
        return public or request.url.scheme == "https"

    def set_session_cookie(self, response: Response, request: HttpRequest, session_id: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(self.session_seconds),
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def set_login_cookie(self, response: Response, request: HttpRequest, value: str) -> None:
        response.set_cookie(
            LOGIN_COOKIE,
            value,
            max_age=LOGIN_COOKIE_SECONDS,
            path="/login",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def set_sso_cookie(self, response: Response, request: HttpRequest, value: str) -> None:
        response.set_cookie(
            SSO_COOKIE,
            value,
            max_age=PENDING_SECONDS,
            path="/auth",
            httponly=True,
            samesite="lax",
            secure=self.secure(request),
        )

    def check_form(self, request: HttpRequest, submitted: str | None, expected: str | None) -> None:
        """Refuse (403) a form that came from another site or lacks the token this origin gave it."""
        foreign = self.foreign_origin(request)
        if foreign is not None:
            raise Refused(403, f"this form was sent from another site ({foreign}); nothing was done")
        if not submitted or not expected or not hmac.compare_digest(submitted.encode(), expected.encode()):
            raise Refused(
                403,
                "this form's CSRF token is missing or out of date: reload the page and try again; "
                "nothing was done",
            )

    def foreign_origin(self, request: HttpRequest) -> str | None:
        """The other site a request came from, or None when it came from this origin (or says nothing;
        the CSRF token then decides)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return request.headers.get("origin") or site
        origin = request.headers.get("origin")
        if origin is None:
            return None
        own = {f"{request.url.scheme}://{request.headers.get('host', '')}"}
        if self.public_url is not None:
            public = urlsplit(self.public_url)
            own.add(f"{public.scheme}://{public.netloc}")
        return None if origin in own else origin

"""Signing in through the team's OpenID Provider: OpenID Connect's authorization code flow with PKCE.

The provider is found by discovery (`{issuer}/.well-known/openid-configuration`). A sign-in begins with a
random `state`, `nonce` and PKCE verifier, kept here and bound to the browser that began it by a cookie of
its own; the callback takes them back once (a replayed or forged callback finds nothing and signs nobody in).
The ID token's signature (the provider's published keys, via joserfc), issuer, audience, expiry and nonce are
checked; claims it lacks come from the userinfo endpoint, whose subject must be the ID token's. What the app
keeps is only the mapping from claims to a principal and its roles.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlencode

import httpx2

from hitl_mcp.config import OidcSettings, check_principal
from hitl_mcp.errors import ConfigError

if TYPE_CHECKING:
    # joserfc is imported when a sign-in is checked, not when every server starts (it costs ~35 ms).
    from joserfc.jwk import KeySet

# How long a begun sign-in may take at the provider before its callback is refused.
PENDING_SECONDS = 600
# Begun sign-ins kept at once; past this the oldest give way (an unauthenticated GET begins one).
MAX_PENDING = 10_000
# The provider's discovery document and keys are read again after this long (keys rotate).
METADATA_SECONDS = 3600
# Clocks of the provider and this server may disagree by this much.
LEEWAY_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 10.0
SIGNING_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


class SignInRefused(Exception):
    """A sign-in that signs nobody in; the message says why, for the person at the browser."""


@dataclass(frozen=True)
class Pending:
    """A sign-in begun here and not yet finished."""

    state: str
    nonce: str
    verifier: str
    browser: str  # SHA-256 of the cookie that binds it to the browser that began it
    next_path: str
    created: float


@dataclass(frozen=True)
class SignedIn:
    principal: str
    roles: tuple[str, ...]
    subject: str
    id_token: str


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    basic_auth: bool
    algorithms: tuple[str, ...]


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SingleSignOn:
    """One configured OpenID Provider: begin a sign-in, finish it from the callback, end it."""

    def __init__(
        self,
        settings: OidcSettings,
        redirect_uri: str,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.redirect_uri = redirect_uri
        self.clock = clock
        self._transport = transport
        self._pending: dict[str, Pending] = {}
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._keys: KeySet | None = None

    def _client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, transport=self._transport)

    # -- the provider ---------------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        now = self.clock()
        if self._metadata is not None and now - self._metadata[0] < METADATA_SECONDS:
            return self._metadata[1]
        issuer = self.settings.issuer.rstrip("/")
        document = await self._get_json(f"{issuer}/.well-known/openid-configuration", "discovery")
        if str(document.get("issuer", "")).rstrip("/") != issuer:
            raise SignInRefused(
                f"the provider's discovery document names issuer {document.get('issuer')!r}, "
                f"not {self.settings.issuer!r}: check [web.oidc] issuer"
            )
        try:
            methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            offered = document.get("id_token_signing_alg_values_supported") or ["RS256"]
            metadata = ProviderMetadata(
                issuer=str(document["issuer"]),
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
                userinfo_endpoint=document.get("userinfo_endpoint"),
                end_session_endpoint=document.get("end_session_endpoint"),
                basic_auth="client_secret_basic" in methods,
                algorithms=tuple(a for a in offered if a in SIGNING_ALGORITHMS),
            )
        except KeyError as missing:
            raise SignInRefused(f"the provider's discovery document has no {missing}") from None
        self._metadata, self._keys = (now, metadata), None
        return metadata

    async def _key_set(self, metadata: ProviderMetadata, *, fresh: bool = False) -> KeySet:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        if self._keys is None or fresh:
            document = await self._get_json(metadata.jwks_uri, "keys")
            try:
                self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError) as error:
                raise SignInRefused(f"the provider's published keys cannot be read: {error}") from None
        return self._keys

    async def _get_json(self, url: str, what: str, token: str | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._client() as client:
                response = await client.get(url, headers=headers)
        except httpx2.HTTPError as error:
            raise SignInRefused(f"the sign-in provider cannot be reached ({what}): {error}") from None
        return self._json(response, what)

    @staticmethod
    def _json(response: httpx2.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
            raise SignInRefused(
                f"the sign-in provider refused ({what}): HTTP {response.status_code}"
                + (f", {error}" if error else "")
            )
        return body

    # -- signing in -----------------------------------------------------------------------------------

    async def begin(self, browser_cookie: str, next_path: str = "/") -> str:
        """The provider's authorization URL for a new sign-in, bound to `browser_cookie`."""
        metadata = await self.metadata()
        now = self.clock()
        self._prune(now)
        pending = Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            browser=_digest(browser_cookie),
            next_path=next_path,
            created=now,
        )
        self._pending[pending.state] = pending
        query = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(dict.fromkeys(("openid", *self.settings.scopes))),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": _s256(pending.verifier),
            "code_challenge_method": "S256",
        }
        return f"{metadata.authorization_endpoint}?{urlencode(query)}"

    def _prune(self, now: float) -> None:
        for state, pending in list(self._pending.items()):
            if now - pending.created > PENDING_SECONDS:
                del self._pending[state]
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]

    def _take(self, state: str, browser_cookie: str | None) -> Pending:
        pending = self._pending.pop(state, None) if state else None
        if pending is None or self.clock() - pending.created > PENDING_SECONDS:
            raise SignInRefused(
                "this sign-in is unknown, already used or expired: nobody was signed in; sign in again"
            )
        if browser_cookie is None or not hmac.compare_digest(pending.browser, _digest(browser_cookie)):
            raise SignInRefused(
                "this sign-in was begun in another browser: nobody was signed in; sign in again here"
            )
        return pending

    async def finish(self, params: Mapping[str, str], browser_cookie: str | None) -> tuple[SignedIn, str]:
        """The principal a callback signs in, and where to go next. Every check failing refuses."""
        pending = self._take(params.get("state", ""), browser_cookie)
        if "error" in params:
            said = params.get("error_description") or params["error"]
            raise SignInRefused(f"the sign-in provider refused: {said[:200]}")
        metadata = await self.metadata()
        if "iss" in params and params["iss"].rstrip("/") != metadata.issuer.rstrip("/"):
            raise SignInRefused(
                "this answer comes from another provider than the one asked: nobody was signed in"
            )
        code = params.get("code", "")
        if not code:
            raise SignInRefused("the provider's answer has no code: nobody was signed in")
        tokens = await self._exchange(metadata, code, pending.verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("the provider's answer has no ID token: nobody was signed in")
        claims = await self._verified_claims(metadata, id_token, pending.nonce)
        wanted = [c for c in (self.settings.principal_claim, self.settings.roles_claim) if c]
        if any(c not in claims for c in wanted) and metadata.userinfo_endpoint:
            access = tokens.get("access_token")
            if isinstance(access, str):
                info = await self._get_json(metadata.userinfo_endpoint, "userinfo", token=access)
                if info.get("sub") != claims.get("sub"):
                    raise SignInRefused(
                        "the provider's userinfo is for another subject: nobody was signed in"
                    )
                claims = {**info, **claims}
        return self._signed_in(claims, id_token), pending.next_path

    async def _exchange(self, metadata: ProviderMetadata, code: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if metadata.basic_auth:
            # RFC 6749 2.3.1: each part form-encoded before the Basic encoding.
            pair = f"{quote_plus(self.settings.client_id)}:{quote_plus(self.settings.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form |= {"client_id": self.settings.client_id, "client_secret": self.settings.client_secret}
        try:
            async with self._client() as client:
                response = await client.post(metadata.token_endpoint, data=form, headers=headers)
        except httpx2.HTTPError as error:
            raise SignInRefused(f"the sign-in provider cannot be reached (token): {error}") from None
        return self._json(response, "token")

    async def _verified_claims(self, metadata: ProviderMetadata, id_token: str, nonce: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError

        algorithms = list(metadata.algorithms) or ["RS256"]
        try:
            try:
                token = jwt.decode(id_token, await self._key_set(metadata), algorithms=algorithms)
            except JoseError:
                # A key this server has not seen yet: the provider may have rotated its keys.
                token = jwt.decode(id_token, await self._key_set(metadata, fresh=True), algorithms=algorithms)
            registry = jwt.JWTClaimsRegistry(
                now=int(self.clock()),
                leeway=LEEWAY_SECONDS,
                iss={"essential": True, "value": metadata.issuer},
                aud={"essential": True, "value": self.settings.client_id},
                exp={"essential": True},
                sub={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            registry.validate(token.claims)
        except (JoseError, ValueError) as error:
            raise SignInRefused(f"the ID token was refused ({error}): nobody was signed in") from None
        audience = token.claims.get("aud")
        if (
            isinstance(audience, list)
            and len(audience) > 1
            and token.claims.get("azp") != self.settings.client_id
        ):
            raise SignInRefused("the ID token was issued to another client: nobody was signed in")
        return dict(token.claims)

    def _signed_in(self, claims: Mapping[str, Any], id_token: str) -> SignedIn:
        claim = self.settings.principal_claim
        value = claims.get(claim)
        if not isinstance(value, str) or not value:
            raise SignInRefused(f"the provider gave no {claim!r} claim to name you by: nobody was signed in")
        if claim == "email" and claims.get("email_verified") is False:
            raise SignInRefused("the provider says this email address is not verified: nobody was signed in")
        try:
            principal = check_principal(value, f"the {claim!r} claim")
        except ConfigError as error:
            raise SignInRefused(f"{error}: nobody was signed in") from None
        return SignedIn(principal, self._roles(claims), str(claims["sub"]), id_token)

    def _roles(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        if not self.settings.roles_claim:
            return ()
        value = claims.get(self.settings.roles_claim)
        names = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(names, list):
            return ()
        return tuple(sorted({str(name).lower() for name in names if isinstance(name, str) and name.strip()}))

    # -- signing out ----------------------------------------------------------------------------------

    def end_session_url(self, id_token: str | None, after: str) -> str | None:
        """Where to end the session at the provider too, when it offers that."""
        if self._metadata is None or self._metadata[1].end_session_endpoint is None:
            return None
        query = {"client_id": self.settings.client_id, "post_logout_redirect_uri": after}
        if id_token:
            query["id_token_hint"] = id_token
        return f"{self._metadata[1].end_session_endpoint}?{urlencode(query)}"

"""The inbox's Tokens page (`/tokens`): a signed-in person makes and revokes tokens of their own — for an
approver bot, for `hitl` with HITL_TOKEN. A token made here acts as the signed-in principal only, with at
most the roles the session holds, and is shown once; only its SHA-256 is stored (`hitl_mcp.tokens`).
Every form carries the session's CSRF token, as all the inbox's forms do."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route

from hitl_mcp.errors import ConfigError, NotFound
from hitl_mcp.gate import Gate
from hitl_mcp.store.credentials import CredentialStore
from hitl_mcp.tokens import make_token, parse_expiry
from hitl_mcp.web.auth import Session
from hitl_mcp.web.pages import Pages

PATH = "/tokens"
LIFETIMES = ("1d", "30d", "90d", "365d", "never")
DEFAULT_LIFETIME = "90d"


def _at(value: float | None) -> str:
    return "never" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")


def routes(pages: Pages) -> list[Route]:
    page, form = pages.page, pages.form

    def store_of(gate: Gate) -> CredentialStore:
        if not isinstance(gate.store, CredentialStore):
            raise ConfigError("this server's store keeps no tokens")
        return gate.store

    async def listing(
        session: Session, gate: Gate, *, made: tuple[str, str] | None = None, notice: str | None = None
    ) -> Response:
        tokens = await store_of(gate).token_list(session.principal)
        now = pages.face.clock()
        return pages.render(
            "tokens.html",
            nav="tokens",
            session=session,
            tokens=[
                (
                    token,
                    token.live(now),
                    _at(token.created_at),
                    _at(token.expires_at),
                    _at(token.last_used_at),
                )
                for token in reversed(tokens)
            ],
            made=made,
            notice=notice,
            lifetimes=LIFETIMES,
            default_lifetime=DEFAULT_LIFETIME,
        )

    async def show(request: HttpRequest, session: Session, gate: Gate) -> Response:
        return await listing(session, gate)

    async def make(request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]) -> Response:
        lifetime = fields.get("expires", DEFAULT_LIFETIME)
        if lifetime not in LIFETIMES:
            lifetime = DEFAULT_LIFETIME
        # Only roles this session holds: a token never grants its maker more than they have.
        roles = tuple(role for role in session.roles if fields.get(f"role:{role}") == "on")
        secret, stored = await make_token(
            store_of(gate),
            session.principal,
            name=fields.get("name", "").strip() or None,
            roles=roles,
            lifetime=parse_expiry(lifetime, "expires"),
            created_by=session.principal,
            now=pages.face.clock(),
        )
        return await listing(session, gate, made=(stored.name, secret))

    async def revoke(request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]) -> Response:
        token_id = request.path_params["token_id"]
        revoked = await store_of(gate).token_revoke(
            token_id, session.principal, pages.face.clock(), principal=session.principal
        )
        if revoked is None:
            raise NotFound(f"token: you have no live token {token_id[:40]!r}")
        return await listing(session, gate, notice=f"Revoked {revoked.name}: it is refused from now on.")

    return [
        Route(PATH, page(show), methods=["GET"]),
        Route(PATH, page(form(make)), methods=["POST"]),
        Route(f"{PATH}/{{token_id}}/revoke", page(form(revoke)), methods=["POST"]),
    ]

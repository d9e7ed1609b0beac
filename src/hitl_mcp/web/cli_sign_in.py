"""`hitl login`'s page (`/auth/cli`): a signed-in person hands the `hitl` on their own computer a token of
their own, as `gh auth login` does. `hitl login` listens on 127.0.0.1 and opens this page with its port and
a state; the person confirms with a form (CSRF-checked, so no other site can make the browser do it), and
the new token goes to that loopback listener only, with the state the CLI checks.

The token acts as the signed-in principal with the roles the session holds, and is stored like every other
(`hitl_mcp.tokens`): listed on the Tokens page, revocable there or with `hitl token revoke`."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from starlette.requests import Request as HttpRequest
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from hitl_mcp.errors import ConfigError, InvalidArguments
from hitl_mcp.gate import Gate
from hitl_mcp.store.credentials import CredentialStore
from hitl_mcp.tokens import make_token, parse_expiry
from hitl_mcp.web.auth import Session
from hitl_mcp.web.pages import Pages

PATH = "/auth/cli"
LIFETIME = "90d"
PORT = re.compile(r"[1-9][0-9]{3,4}")
STATE = re.compile(r"[A-Za-z0-9_-]{16,128}")


def listener(fields: dict[str, str]) -> tuple[int, str]:
    """The CLI's loopback port and state, each refused with its name when it is not what `hitl login`
    sends."""
    port, state = fields.get("port", ""), fields.get("state", "")
    if not PORT.fullmatch(port) or not 1024 <= int(port) <= 65535:
        raise InvalidArguments("port: must be the loopback port `hitl login` listens on (1024-65535)")
    if not STATE.fullmatch(state):
        raise InvalidArguments("state: must be the state `hitl login` made (16-128 letters, digits, _ or -)")
    return int(port), state


def routes(pages: Pages) -> list[Route]:
    page, form = pages.page, pages.form

    async def confirm(request: HttpRequest, session: Session, gate: Gate) -> Response:
        port, state = listener(dict(request.query_params))
        return pages.render("cli_login.html", nav="tokens", session=session, port=port, state=state)

    async def allow(request: HttpRequest, session: Session, gate: Gate, fields: dict[str, str]) -> Response:
        port, state = listener(fields)
        if not isinstance(gate.store, CredentialStore):
            raise ConfigError("this server's store keeps no tokens")
        secret, _ = await make_token(
            gate.store,
            session.principal,
            name=None,
            roles=session.roles,
            lifetime=parse_expiry(LIFETIME, "expires"),
            created_by=session.principal,
            now=pages.face.clock(),
        )
        # Only ever to the loopback address: the token leaves this server for the person's own computer.
        callback = f"http://127.0.0.1:{port}/callback?" + urlencode({"token": secret, "state": state})
        return RedirectResponse(callback, status_code=303)

    return [
        Route(PATH, page(confirm), methods=["GET"]),
        Route(PATH, page(form(allow)), methods=["POST"]),
    ]

"""The inbox's single sign-on pages: `/auth/login` sends the browser to the team's OpenID Provider, and
`/auth/callback` takes it back, checks everything (`hitl_mcp.web.sso`) and opens a session.

The callback arrives by a cross-site navigation, with which the session's SameSite=Strict cookie would not be
sent: so it does not redirect, but answers a page that moves on to where the person was going, a navigation
that starts on this site.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from starlette.requests import Request as HttpRequest
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from hitl_mcp.web.auth import CALLBACK_PATH, SSO_COOKIE
from hitl_mcp.web.pages import Pages, local_path
from hitl_mcp.web.sso import SignInRefused, SingleSignOn

LOGIN_PATH = "/auth/login"
Handler = Callable[[HttpRequest], Awaitable[Response]]

logger = logging.getLogger(__name__)


def routes(pages: Pages) -> list[Route]:
    """The sign-on routes, when the server is configured for an OpenID Provider."""
    sso = pages.face.sign_in.sso
    if sso is None:
        return []
    return [
        Route(LOGIN_PATH, _begin(pages, sso), methods=["GET"]),
        Route(CALLBACK_PATH, _callback(pages, sso), methods=["GET"]),
    ]


def _begin(pages: Pages, sso: SingleSignOn) -> Handler:
    async def begin(request: HttpRequest) -> Response:
        browser = secrets.token_urlsafe(32)
        try:
            url = await sso.begin(browser, local_path(request.query_params.get("next")))
        except SignInRefused as refused:
            logger.warning("single sign-on cannot begin: %s", refused)
            return pages.login(request, refusal=f"Single sign-on is unavailable: {refused}", status=502)
        response = RedirectResponse(url, status_code=303)
        pages.face.sign_in.set_sso_cookie(response, request, browser)
        return response

    return begin


def _callback(pages: Pages, sso: SingleSignOn) -> Handler:
    sign_in = pages.face.sign_in

    async def callback(request: HttpRequest) -> Response:
        response: Response
        try:
            signed_in, next_path = await sso.finish(
                dict(request.query_params), request.cookies.get(SSO_COOKIE)
            )
        except SignInRefused as refused:
            logger.info("a single sign-on callback signed nobody in: %s", refused)
            response = pages.login(request, refusal=str(refused), status=401)
        else:
            session_id, _ = await sign_in.start(
                signed_in.principal, roles=signed_in.roles, id_token=signed_in.id_token
            )
            response = pages.render("reopen.html", here=next_path)
            sign_in.set_session_cookie(response, request, session_id)
        response.delete_cookie(SSO_COOKIE, path="/auth")
        return response

    return callback

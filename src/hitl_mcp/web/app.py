"""The web face on the HTTP server: `/api/v1` and the inbox beside `/mcp`, on one host and port.

`/mcp` goes to the SDK's streamable-HTTP app untouched — its own bearer auth, its own DNS-rebinding
protection. Everything else goes to the inbox app, whose lifespan runs the SDK app's (which opens the gate
and starts the housekeeping), so the MCP tools, the API and the pages share one gate and one store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hitl_mcp.auth import is_loopback
from hitl_mcp.gate import Gate
from hitl_mcp.web import api, cli_sign_in, health, link_pages, rendering, sign_on, slack, token_pages
from hitl_mcp.web.auth import InboxOff, SignIn
from hitl_mcp.web.face import WebFace
from hitl_mcp.web.health import Operations
from hitl_mcp.web.pages import Pages
from hitl_mcp.web.problems import problem

MCP_PATH = "/mcp"
MAX_BODY_BYTES = 1 << 20
STATIC = Path(__file__).parent / "static"
# Nothing from another host, no inline script or style, never framed: what an agent wrote cannot run here.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Sign-in links carry a token in their query: never in a Referer to another site. (`no-referrer` would
    # also make browsers send `Origin: null` on this site's own forms, which the CSRF check must refuse.)
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def allowed_hosts(host: str, public_url: str | None) -> frozenset[str] | None:
    """The Host names a loopback server answers to (a web page must not reach it by rebinding a name to
    127.0.0.1, the attack the SDK guards /mcp against); None, any, for a public bind, which tokens guard."""
    if not is_loopback(host):
        return None
    names = {host.lower().removeprefix("[").removesuffix("]"), "127.0.0.1", "localhost", "::1"}
    if public_url:
        names.add((urlsplit(public_url).hostname or "").lower())
    return frozenset(names)


def _host_name(header: str) -> str:
    if header.startswith("["):
        return header[1 : header.find("]")].lower() if "]" in header else header.lower()
    return header.rpartition(":")[0].lower() if ":" in header else header.lower()


class Guard:
    """Around every inbox and API exchange: the security headers on each response; and before the app sees
    a request, the Host check and the body limit (a body over 1 MiB is refused before it is parsed)."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        headers = Headers(scope=scope)
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
            await self._refuse(
                scope, receive, send_guarded, 421, "this server does not answer to that Host name"
            )
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send_guarded)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await self._refuse(
                scope, receive, send_guarded, 413, "the body is larger than 1 MiB; nothing was done"
            )
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await self._refuse(
                    scope, receive, send_guarded, 413, "the body is larger than 1 MiB; nothing was done"
                )
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send_guarded)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        response: Response
        if scope["path"].startswith(api.PREFIX):
            response = problem(status, detail)
        else:
            response = Response(detail, status_code=status, media_type="text/plain")
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then what follows: a disconnect

    return replayed


def inbox_app(
    mcp_http: Starlette,
    *,
    running_gate: Callable[[], Gate | None],
    sign_in: SignIn,
    host: str,
    stopping: Callable[[], bool] = lambda: False,
    operations: Operations | None = None,
) -> ASGIApp:
    """`mcp_http` at /mcp, and the inbox and API everywhere else, sharing `mcp_http`'s lifespan and gate;
    with `operations`, the probes and the scrape too (`hitl_mcp.web.health`)."""
    face = WebFace(sign_in, running_gate, stopping)
    pages = Pages(face)

    async def http_error(request: HttpRequest, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if request.url.path.startswith(api.PREFIX):
            return problem(error.status_code, str(error.detail), dict(error.headers or {}))
        response = pages.render("error.html", error.status_code, refusal=str(error.detail))
        response.headers.update(dict(error.headers or {}))
        return response

    inbox = Starlette(
        routes=[
            *(health.routes(operations) if operations is not None else ()),
            *api.routes(face),
            *pages.routes(),
            *sign_on.routes(pages),
            *token_pages.routes(pages),
            *cli_sign_in.routes(pages),
            *slack.routes(face),
            *link_pages.routes(pages),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=_lifespan_of(mcp_http),
        exception_handlers={HTTPException: http_error},
    )
    return _beside_mcp(mcp_http, Guard(inbox, hosts=allowed_hosts(host, sign_in.public_url)))


def inbox_off_app(
    mcp_http: Starlette, *, off: InboxOff, host: str, operations: Operations | None = None
) -> ASGIApp:
    """`mcp_http` at /mcp, and everywhere else a 404 that says why the inbox is off and what to do about
    it: a page for a browser, problem+json for the API and for clients asking for JSON."""
    templates = rendering.environment()
    detail = f"the inbox and /api/v1 are off: {off}"

    async def explain(request: HttpRequest) -> Response:
        accept = request.headers.get("accept", "")
        if request.url.path.startswith(api.PREFIX) or ("json" in accept and "text/html" not in accept):
            return problem(404, detail)
        html = templates.get_template("off.html").render(
            reason=str(off), principal_clash=off.principal_clash, session=None, notice=None, refusal=None
        )
        return HTMLResponse(html, status_code=404, headers={"Cache-Control": "no-store"})

    inbox = Starlette(
        routes=[
            # An inbox that cannot be served safely leaves the probes and the scrape as they are.
            *(health.routes(operations) if operations is not None else ()),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/{path:path}", explain, methods=["GET", "HEAD", *BODY_METHODS]),
        ],
        lifespan=_lifespan_of(mcp_http),
    )
    return _beside_mcp(mcp_http, Guard(inbox, hosts=allowed_hosts(host, None)))


def _lifespan_of(mcp_http: Starlette) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The SDK app's lifespan, which opens the gate and starts the housekeeping, run by the app around it."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with mcp_http.router.lifespan_context(mcp_http):
            yield

    return lifespan


def _beside_mcp(mcp_http: Starlette, guarded: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == MCP_PATH or path.startswith(MCP_PATH + "/")):
            await mcp_http(scope, receive, send)
        else:
            await guarded(scope, receive, send)

    return app

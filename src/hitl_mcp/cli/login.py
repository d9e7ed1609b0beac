"""`hitl login` and `hitl logout`: a token for `hitl` on this computer, from the server's inbox.

`hitl login` listens on a random loopback port and opens the server's `/auth/cli` page with that port and
a fresh state; the person signs in there (single sign-on or a token) and allows it; the server sends a new
token of theirs to `http://127.0.0.1:PORT/callback` with the state, which must be ours. The token is saved
in the user's config folder, readable only by them, and used whenever HITL_SERVER names that server and
HITL_TOKEN is not set."""

from __future__ import annotations

import hmac
import os
import secrets
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import click

from hitl_mcp.cli import credentials
from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import refusals
from hitl_mcp.errors import ConfigError, NotAllowed

LOGIN_SECONDS = 300.0
# How often the wait for the browser looks at the clock between connections.
ACCEPT_SECONDS = 0.5
DONE_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>hitl</title>"
    b"<p>hitl is signed in. You can close this page and go back to the terminal.</p>"
)


class Listener(HTTPServer):
    """The loopback end of the sign-in: takes one callback carrying our state, and its token."""

    def __init__(self, state: str) -> None:
        super().__init__(("127.0.0.1", 0), Callback)
        self.state = state
        self.token: str | None = None
        self.timeout = ACCEPT_SECONDS

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Callback(BaseHTTPRequestHandler):
    server: Listener

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        state = params.get("state", [""])[0]
        token = params.get("token", [""])[0]
        if url.path != "/callback":
            self._answer(404, b"not here")
        elif not hmac.compare_digest(state.encode(), self.server.state.encode()) or not token:
            # Not the answer to our request (another page, a forged link): refused, and still waiting.
            self._answer(400, b"this is not the sign-in hitl login is waiting for")
        else:
            self.server.token = token
            self._answer(200, DONE_PAGE, "text/html; charset=utf-8")

    def _answer(self, status: int, body: bytes, media: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # The request line carries the token: never printed.
        return


def server_of(given: str | None) -> str:
    from hitl_mcp.cli.remote import server_url

    found = server_url({"HITL_SERVER": given} if given else os.environ)
    if found is None:
        raise ConfigError("--server: give the server's URL (https://hitl.example.com), or set HITL_SERVER")
    return found


@main.command()
@click.option("--server", metavar="URL", help="The server to sign in to (default: HITL_SERVER).")
@click.option("--no-browser", is_flag=True, help="Print the page to open instead of opening a browser.")
@click.option(
    "--timeout",
    "seconds",
    default=LOGIN_SECONDS,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="How long to wait for the sign-in in the browser.",
)
@refusals
def login(server: str | None, no_browser: bool, seconds: float) -> None:
    """Sign in to a server in the browser and save a token for `hitl` on this computer.

    The server's inbox signs you in (single sign-on or a token) and asks you to allow it; the new token
    acts as you, expires in 90 days, and is saved in your config folder, readable only by you. Commands
    then act through the server whenever HITL_SERVER names it (HITL_TOKEN, when set, wins)."""
    url = server_of(server)
    listener = Listener(secrets.token_urlsafe(24))
    page = f"{url}/auth/cli?" + urlencode({"port": listener.port, "state": listener.state})
    try:
        if no_browser or not webbrowser.open(page):
            click.echo(f"Open this page in your browser to sign in: {page}", err=True)
        else:
            click.echo(f"Signing in through your browser; if no page opened, open {page}", err=True)
        deadline = time.monotonic() + seconds
        while listener.token is None and time.monotonic() < deadline:
            listener.handle_request()
    finally:
        listener.server_close()
    if listener.token is None:
        raise NotAllowed(f"no sign-in came back from {url} within {seconds:g} s; nothing was saved")
    principal = _principal(url, listener.token)
    path = credentials.save(url, listener.token)
    click.echo(f"Signed in to {url} as {principal}; the token is saved in {path} (readable only by you).")


def _principal(url: str, token: str) -> str:
    import anyio

    from hitl_mcp.cli import remote

    async def ask() -> str:
        async with remote.connect(url, token) as gate:
            return gate.principal

    return anyio.run(ask)


@main.command()
@click.option("--server", metavar="URL", help="The server to sign out of (default: HITL_SERVER).")
@refusals
def logout(server: str | None) -> None:
    """Delete the token `hitl login` saved for a server.

    The token itself stays valid until it expires: revoke it on the inbox's Tokens page, or with
    `hitl token revoke`, if it may have been copied."""
    url = server_of(server)
    if credentials.remove(url):
        click.echo(f"Signed out of {url}: its saved token is deleted from {credentials.path()}.")
    else:
        click.echo(f"No token was saved for {url}.")

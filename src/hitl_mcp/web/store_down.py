"""A store outage met before an HTTP exchange has answered becomes a 503 that says so.

The one place this matters is a bearer token kept in the store: while the store cannot be reached, the token
cannot be checked. Refusing it with 401 would tell a client its credential is wrong (and some drop it); a
500 would say nothing. The REST API and the inbox answer their own outages; this is for the MCP endpoint,
whose token check (the SDK's bearer middleware) runs before any handler of ours. Starlette answers an
exception with a 500 before it re-raises it, so a 500 is held back until it is known what caused it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hitl_mcp.errors import StoreUnavailable
from hitl_mcp.web.problems import problem

SERVER_ERROR = 500


def answer_store_outage(app: ASGIApp) -> ASGIApp:
    async def answered(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        held: list[Message] = []
        passing = False

        async def watched(message: Message) -> None:
            nonlocal passing
            if message["type"] == "http.response.start":
                passing = message["status"] != SERVER_ERROR
            if passing:
                await send(message)
            else:
                held.append(message)

        try:
            await app(scope, receive, watched)
        except StoreUnavailable as fault:
            if passing:
                raise
            response = problem(503, str(fault.nothing("nothing was done")), {"Retry-After": "5"})
            await response(scope, receive, send)
            return
        for message in held:
            await send(message)

    return answered

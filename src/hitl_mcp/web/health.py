"""What an operator's probes and scrapers ask: `/healthz`, `/readyz`, `/metrics`.

- `/healthz`: 200 while the process serves HTTP at all. Nothing else is asked, so a slow store never makes
  a supervisor restart a process that would come back to the same store.
- `/readyz`: 200 when this server can do its work — its gate is open, the store answers a read within
  `STORE_SECONDS`, every configured upstream has a live session — else 503. The JSON body names what is
  not ready; with tokens configured, only a caller with a valid token gets it (others get the status and
  a bare body: store locations and upstream failures are not for anyone who can reach the port).
- `/metrics`: Prometheus's text format (`hitl_mcp.metrics`). Open on a loopback server without tokens;
  with tokens, only for a principal holding the `metrics` role (in the config or on its stored token).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hitl_mcp.auth import PrincipalTokens, is_loopback
from hitl_mcp.errors import HitlError
from hitl_mcp.gate import Gate
from hitl_mcp.metrics import CONTENT_TYPE, Scraper, UpstreamUp
from hitl_mcp.upstream.state import Status as UpstreamStatus
from hitl_mcp.upstream.state import UpstreamState

METRICS_ROLE = "metrics"
# How long the store may take to answer readiness's read before the server counts as not ready.
STORE_SECONDS = 2.0
NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class Operations:
    """What the probes read: the running gate (None while the server starts or stops), the upstreams'
    states, and the tokens that guard details (None: a tokenless server)."""

    gate: Callable[[], Gate | None]
    upstreams: Callable[[], Sequence[UpstreamState]] = tuple
    tokens: PrincipalTokens | None = None
    host: str = "127.0.0.1"
    _scrapers: dict[int, Scraper] = field(default_factory=dict)

    async def caller(self, request: HttpRequest) -> tuple[str, tuple[str, ...]] | None:
        """The principal a request's bearer token names, with its roles; None without a valid one."""
        gate = self.gate()
        if self.tokens is None or gate is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or self.tokens.is_open_token(token):
            return None
        access = await self.tokens.verify_token(token)
        if access is None or access.client_id is None:
            return None
        return access.client_id, gate.roles_of(access.client_id, access.scopes)

    async def open(self) -> bool:
        """Whether anyone who reaches this server may read the details: a loopback server that admits
        clients without a token (none has been made yet)."""
        if not is_loopback(self.host):
            return False
        if self.tokens is None:
            return True
        return await self.tokens.admits_open()

    def scraper(self, gate: Gate) -> Scraper:
        # One per store, so the count of finished requests is kept between scrapes.
        found = self._scrapers.get(id(gate.store))
        if found is None or found.store is not gate.store:
            found = Scraper(gate.store, self.upstreams_up)
            self._scrapers = {id(gate.store): found}
        return found

    def upstreams_up(self) -> list[UpstreamUp]:
        return [UpstreamUp(state.name, state.status is UpstreamStatus.READY) for state in self.upstreams()]


async def readiness(operations: Operations) -> tuple[bool, dict[str, Any]]:
    """Whether this server is ready, and the checks that say so."""
    not_ready: list[str] = []
    checks: dict[str, Any] = {}
    gate = operations.gate()
    if gate is None:
        not_ready.append("server: starting or stopping")
        checks["store"] = {"ok": False, "reason": "the server is not running its gate"}
    else:
        checks["store"] = await _store_check(gate)
        if not checks["store"]["ok"]:
            not_ready.append(f"store: {checks['store']['reason']}")
    upstreams: dict[str, Any] = {}
    for state in operations.upstreams():
        ready = state.status is UpstreamStatus.READY
        upstreams[state.name] = {"ok": ready, "status": state.status.value, "reason": state.reason}
        if not ready:
            why = f" ({state.reason})" if state.reason else ""
            not_ready.append(f"upstream {state.name}: {state.status.value}{why}")
    checks["upstreams"] = upstreams
    return not not_ready, {"checks": checks, "not_ready": not_ready}


async def _store_check(gate: Gate) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with anyio.fail_after(STORE_SECONDS):
            await gate.store.audit_head()  # a real read of the store, on its indexed tail
    except TimeoutError:
        return {"ok": False, "reason": f"the store did not answer within {STORE_SECONDS:g}s"}
    except HitlError as error:
        return {"ok": False, "reason": str(error)}
    return {"ok": True, "seconds": round(time.perf_counter() - started, 6)}


def routes(operations: Operations) -> list[Route]:
    async def healthz(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    async def readyz(request: HttpRequest) -> Response:
        ready, details = await readiness(operations)
        status = 200 if ready else 503
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if await operations.open() or await operations.caller(request) is not None:
            body |= details
        return JSONResponse(body, status_code=status, headers=NO_STORE)

    async def metrics(request: HttpRequest) -> Response:
        if not await operations.open():
            caller = await operations.caller(request)
            if caller is None:
                return _refusal(
                    401,
                    "/metrics needs Authorization: Bearer TOKEN of a principal with the metrics role",
                    {"WWW-Authenticate": "Bearer"},
                )
            if METRICS_ROLE not in caller[1]:
                return _refusal(
                    403,
                    f"{caller[0]} does not hold the {METRICS_ROLE} role; give it with "
                    "`hitl token new NAME --roles metrics` or [principals.NAME] roles",
                )
        gate = operations.gate()
        if gate is None:
            return _refusal(503, "the server is starting or stopping")
        try:
            body = await operations.scraper(gate).render()
        except HitlError as error:
            return _refusal(503, f"the store cannot be read: {error}")
        return Response(body, media_type=CONTENT_TYPE, headers=NO_STORE)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET", "HEAD"]),
    ]


def _refusal(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        detail + "\n", status_code=status, media_type="text/plain", headers={**NO_STORE, **(headers or {})}
    )

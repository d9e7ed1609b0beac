"""Whether a call to an upstream left hitl: the line between "certainly no effect" and "outcome unknown".

The SDK's client cannot say. Its dispatcher writes a request onto the transport's in-memory stream and
waits; when the connection dies it answers every waiter alike with CONNECTION_CLOSED, whether the request
was still queued in hitl or already read by the upstream. So each call carries a `Delivery`, which the
write stream we hand the dispatcher finds through a context variable (the dispatcher writes a request in
the calling task), and the transport records on it how far the request got:

- stdio (`stdio.py`, ours): the writer task asks the delivery right before it writes the line to the
  upstream's stdin. A line it never began, or whose write found the pipe closed (EPIPE: no process can
  read it any more, and the newline that ends it never went in), certainly had no effect.
- streamable HTTP (the SDK's transport over `TrackingTransport`, an httpx transport): the POST carrying
  the request, recognised by its JSON-RPC id, is "sending" from the moment httpx has it. Only a failure
  to connect (refused, timed out, no connection from the pool) proves that none of it left.

A call may give up (its timeout) while its request is still with hitl. `withdraw` then marks it so that
no transport sends it later, and only if that succeeds is the call `NotSent`. A delivery that cannot
vouch for where its request is — including one the tracking lost sight of — makes it `LostAfterSend`:
when in doubt, the outcome is unknown.
"""

from __future__ import annotations

import contextvars
import json
import weakref
from enum import Enum
from types import TracebackType
from typing import Self

import anyio
import httpx2
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCRequest, RequestId

from hitl_mcp.sdk_seams import WriteStream


class NotSent(Exception):
    """The call never left hitl: the upstream is not ready (unknown, starting, failed, stopped), or the
    request was not written before the session ended or the call gave up. It certainly had no effect."""


class LostAfterSend(Exception):
    """The call was handed to the upstream, and then the session died, or no answer came in time: whether
    it took effect is unknown."""


class Stage(Enum):
    KEPT = "kept"
    """No transport holds it yet."""
    HANDED = "handed"
    """A transport holds it and may send it at any moment (the SDK's HTTP transport)."""
    GUARDED = "guarded"
    """A transport holds it and will ask `start_sending` before its first byte goes out (our stdio one)."""
    SENDING = "sending"
    """Its first byte may have left."""
    WITHDRAWN = "withdrawn"
    """Given up on before it left; it never will."""
    UNSENT = "unsent"
    """The transport failed before any of it could reach the upstream."""


CLEARLY_NOT_SENT = frozenset({Stage.KEPT, Stage.GUARDED, Stage.WITHDRAWN, Stage.UNSENT})
# What proves an HTTP request never left: no connection was made (or none was free to use).
NOT_CONNECTED = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.UnsupportedProtocol)


class Delivery:
    """What became of one call's request on its way to the upstream."""

    def __init__(self) -> None:
        self.stage = Stage.KEPT
        self.request_id: RequestId | None = None
        self.answer: tuple[int, str] | None = None
        """The code and message of the JSON-RPC error the upstream itself answered with, when it did."""
        self.http_status: int | None = None
        """The HTTP status of the POST that carried it, once its response began."""

    def withdraw(self) -> bool:
        """Give up on the request. True when it certainly never left and now never will."""
        if self.stage in CLEARLY_NOT_SENT:
            if self.stage is not Stage.UNSENT:
                self.stage = Stage.WITHDRAWN
            return True
        return False

    def start_sending(self) -> bool:
        """Called by a transport right before the request's first byte goes out: False if it must not."""
        if self.stage in (Stage.WITHDRAWN, Stage.UNSENT):
            return False
        self.stage = Stage.SENDING
        return True

    def unsent(self) -> None:
        """The transport failed in a way that proves none of the request reached the upstream."""
        if self.stage is Stage.SENDING:
            self.stage = Stage.UNSENT


current_delivery: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "hitl_upstream_delivery", default=None
)


def _is_call(message: SessionMessage) -> bool:
    return isinstance(message.message, JSONRPCRequest) and message.message.method == "tools/call"


def delivery_of(message: SessionMessage) -> Delivery | None:
    """The delivery of the call whose task is sending `message`, when `message` is that call's request."""
    delivery = current_delivery.get()
    if delivery is None or not _is_call(message):
        return None
    assert isinstance(message.message, JSONRPCRequest)
    return delivery if delivery.request_id in (None, message.message.id) else None


class TrackedWriteStream:
    """The write stream the SDK's dispatcher is given: it notes on each call's delivery that a transport
    holds the request now (`guarded`: whether that transport asks before writing).

    `open_calls` holds the deliveries of the calls in flight on this session: a call request that passes
    here without one (the SDK wrote it from some other task) makes them all unknown, so lost tracking
    can never turn into a `NotSent` that was sent."""

    def __init__(
        self, inner: WriteStream[SessionMessage], *, guarded: bool, open_calls: weakref.WeakSet[Delivery]
    ) -> None:
        self._inner = inner
        self._stage = Stage.GUARDED if guarded else Stage.HANDED
        self._open_calls = open_calls

    async def send(self, item: SessionMessage, /) -> None:
        delivery = delivery_of(item)
        if delivery is not None and delivery.stage is Stage.KEPT:
            assert isinstance(item.message, JSONRPCRequest)
            delivery.request_id = item.message.id
            delivery.stage = self._stage
        elif delivery is None and _is_call(item):
            for unknown in list(self._open_calls):
                if unknown.stage is Stage.KEPT:
                    unknown.stage = Stage.HANDED
        try:
            await self._inner.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # A closed memory stream refuses at once: no transport took the request.
            if delivery is not None and delivery.stage is self._stage:
                delivery.stage = Stage.KEPT
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        await self.aclose()
        return None


class TrackingTransport(httpx2.AsyncBaseTransport):
    """An httpx transport that records on a call's delivery what became of the POST carrying its request,
    and remembers the last HTTP error status (a 401 says more than the SDK's "Server returned an error")."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner
        self.last_error_status: int | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        delivery = current_delivery.get()
        carrying = delivery is not None and request.method == "POST" and _carries(request, delivery)
        if delivery is not None and carrying and not delivery.start_sending():
            # Its call gave up before this POST began: answer the SDK as a server that took nothing would,
            # which settles the abandoned request instead of failing the session.
            return httpx2.Response(202, request=request)
        try:
            response = await self._inner.handle_async_request(request)
        except NOT_CONNECTED:
            if delivery is not None and carrying:
                delivery.unsent()
            raise
        if delivery is not None and carrying:
            delivery.http_status = response.status_code
            if response.status_code >= 400:
                response = await _note_answer(response, request, delivery)
        if response.status_code >= 400:
            self.last_error_status = response.status_code
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _note_answer(
    response: httpx2.Response, request: httpx2.Request, delivery: Delivery
) -> httpx2.Response:
    """Read an error response's body to tell the server's own JSON-RPC answer (it may have run the tool,
    then answered 400) from a refusal at the HTTP layer (it did not). The body is handed on unchanged."""
    if not response.headers.get("content-type", "").lower().startswith("application/json"):
        return response
    try:
        body = await response.aread()
    finally:
        await response.aclose()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) and answer.get("jsonrpc") == "2.0" else None
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        delivery.answer = (error["code"], str(error.get("message", "")))
    # Read and decoded already: the copy must not claim an encoding or a length its content no longer has.
    dropped = ("content-encoding", "content-length", "transfer-encoding")
    headers = [(name, value) for name, value in response.headers.items() if name.lower() not in dropped]
    return httpx2.Response(
        response.status_code, headers=headers, content=body, request=request, extensions=response.extensions
    )


def _carries(request: httpx2.Request, delivery: Delivery) -> bool:
    if delivery.request_id is None:
        return False
    try:
        body = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return False
    return (
        isinstance(body, dict)
        and body.get("method") == "tools/call"
        and body.get("id") == delivery.request_id
    )

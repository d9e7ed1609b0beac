"""The streamable HTTP transport to an upstream: the SDK's, over an httpx client whose transport records
on each call's delivery what became of the POST carrying it (see `delivery.py`)."""

from __future__ import annotations

import weakref
from contextlib import AsyncExitStack
from types import TracebackType

import httpx2
from mcp.client.streamable_http import streamable_http_client

from hitl_mcp.sdk_seams import TransportStreams
from hitl_mcp.upstream.delivery import Delivery, TrackedWriteStream, TrackingTransport
from hitl_mcp.upstream.settings import UpstreamSettings


class HttpTransport:
    """The SDK's streamable HTTP transport, over an httpx client whose transport tracks deliveries."""

    def __init__(self, upstream: UpstreamSettings) -> None:
        assert upstream.url is not None
        self.upstream = upstream
        self.tracking = TrackingTransport(httpx2.AsyncHTTPTransport())
        self.open_calls: weakref.WeakSet[Delivery] = weakref.WeakSet()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> TransportStreams:
        assert self.upstream.url is not None
        http = httpx2.AsyncClient(
            headers=dict(self.upstream.headers),
            # Connecting is bounded; reading is not, much: a change subscription stays open for hours.
            timeout=httpx2.Timeout(30.0, connect=min(30.0, self.upstream.start_timeout_seconds), read=300.0),
            transport=self.tracking,
        )
        await self._stack.enter_async_context(http)
        read, write = await self._stack.enter_async_context(
            streamable_http_client(self.upstream.url, http_client=http)
        )
        return read, TrackedWriteStream(write, guarded=False, open_calls=self.open_calls)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

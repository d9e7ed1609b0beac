"""The Gate calls the CLI's commands make, as a protocol: the Gate on a store answers them, and so does
`hitl_mcp.cli.remote.RemoteGate` through a server's REST API. A command written against `Calls` prints the
same thing either way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from hitl_mcp.models import Request, RequestPage, Status
from hitl_mcp.store import DenialPage, SummaryRows


class Calls(Protocol):
    @property
    def worker(self) -> str: ...

    async def get(self, ref: str) -> Request: ...

    async def approve(
        self, ref: str, principal: str, reason: str | None = None, arguments: Mapping[str, Any] | None = None
    ) -> Request: ...

    async def reject(self, ref: str, principal: str, reason: str) -> Request: ...

    async def cancel(self, ref: str, principal: str) -> Request: ...

    async def retry(self, ref: str, principal: str) -> Request: ...

    async def settle(
        self, ref: str, principal: str, outcome: Literal["executed", "failed"], note: str
    ) -> Request: ...

    async def wait(self, ref: str, timeout: float) -> Request: ...

    def elsewhere(self, request: Request) -> str | None: ...

    async def list(
        self,
        *,
        statuses: tuple[Status, ...] | None = ...,
        tool: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RequestPage: ...

    async def summaries(
        self,
        *,
        statuses: tuple[Status, ...] | None = ...,
        tool: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SummaryRows: ...

    async def count(
        self, *, statuses: tuple[Status, ...] | None = ..., tool: str | None = None, cursor: str | None
    ) -> int: ...

    async def denials(
        self, *, tool: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> DenialPage: ...

    async def count_denials(self, *, tool: str | None = None, cursor: str | None) -> int: ...

"""What is reported about an upstream: whether it is ready, why not, its tools as the rules expose them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mcp_types import Tool

from hitl_mcp.upstream.baseline import ToolChange
from hitl_mcp.upstream.rules import Exposure, Refusal
from hitl_mcp.upstream.settings import Kind, PreviewCall


class Status(StrEnum):
    STOPPED = "stopped"
    """Not running: before `Upstreams` runs, after it stops, or a probe not made."""
    STARTING = "starting"
    """Connecting: starting the process or reaching the URL, the handshake, the first tool listing."""
    READY = "ready"
    """A live session: its tools are offered."""
    FAILED = "failed"
    """It died or could not start; `reason` says why, and it is tried again at `retry_at`."""


@dataclass(frozen=True)
class ListedTool:
    """One tool an upstream offers, as hitl exposes it."""

    tool: Tool
    """As the upstream lists it: name, description, input (and output) schema, annotations."""
    exposure: Exposure
    preview: PreviewCall | None = None
    """The read-only call to make when it is filed, when one is configured and may be made."""

    @property
    def name(self) -> str:
        return self.tool.name


@dataclass(frozen=True)
class UpstreamState:
    name: str
    kind: Kind
    status: Status
    since: datetime
    """When it entered this status."""
    reason: str | None = None
    """Why it failed, in words: `command not found: npx`, `exited with status 1`…"""
    tools: tuple[ListedTool, ...] = ()
    """While ready: every tool it offers that hitl exposes."""
    refused: tuple[Refusal, ...] = ()
    """While ready: tools hitl does not expose (a name that would not be valid)."""
    warnings: tuple[str, ...] = ()
    """While ready: what is configured but cannot be used (a preview calling a gated tool)."""
    retry_at: datetime | None = None
    """When failed: when it is tried again."""
    server: str | None = None
    """The name and version the upstream gives itself, when it does."""
    protocol_version: str | None = None
    target: dict[str, str] = field(default_factory=dict)
    changes: tuple[ToolChange, ...] = ()
    """Tools whose definition changed after hitl first served them (the latest change of each)."""

    def tool(self, name: str) -> ListedTool | None:
        """The tool of that name (the upstream's), if it offers it now."""
        return next((listed for listed in self.tools if listed.name == name), None)

    def as_json(self) -> dict[str, Any]:
        """For machines (`hitl upstreams --json`): exact data, nothing escaped."""
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "status": self.status.value,
            "since": self.since.isoformat(),
            "reason": self.reason,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "server": self.server,
            "protocol_version": self.protocol_version,
            "tools": [
                {
                    "name": listed.name,
                    "exposed_as": listed.exposure.exposed_name,
                    "decision": listed.exposure.decision,
                    "why": listed.exposure.why,
                    "description": listed.tool.description,
                    "annotations": None
                    if listed.tool.annotations is None
                    else listed.tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True),
                    "preview": None if listed.preview is None else listed.preview.model_dump(mode="json"),
                }
                for listed in self.tools
            ],
            "refused": [{"name": refusal.tool, "reason": refusal.reason} for refusal in self.refused],
            "warnings": list(self.warnings),
            "changes": [change.as_json() for change in self.changes],
        }

"""What each upstream tool was when hitl first served it, so that a re-listing can tighten its gating but
never loosen it, and so that a changed definition is announced.

Annotations are the upstream's own claim (the MCP specification: untrusted unless the server is). An
upstream that re-announces a gated tool as `readOnlyHint: true` after `notifications/tools/list_changed`
would otherwise pass it from then on: a "rug pull". So a tool once gated stays gated (held) until the
operator changes the upstream's rules (a restart with a changed `[upstreams.NAME]`), and a tool whose
description, input schema or annotations change is reported as a `ToolChange`.

A baseline lives as long as the `Upstreams` that holds it — across restarts of the upstream's session —
and is seeded at start from the changes recorded in the store (see `hitl_mcp.gateway.changes`), so a
restart without a config change keeps a held tool held.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from mcp_types import Tool

from hitl_mcp.upstream.rules import Exposure

PARTS = ("description", "input schema", "annotations")
"""The parts of a definition compared, in the words a change names them."""


def digests(tool: Tool) -> dict[str, str]:
    """A digest of each part of `tool`'s definition a change is reported for."""
    values: dict[str, Any] = {
        "description": tool.description,
        "input schema": tool.input_schema,
        "annotations": None
        if tool.annotations is None
        else tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return {
        part: hashlib.sha256(json.dumps(values[part], sort_keys=True).encode()).hexdigest()[:16]
        for part in PARTS
    }


@dataclass(frozen=True)
class ToolChange:
    """A tool whose definition changed after it was first served."""

    upstream: str
    tool: str
    exposed_name: str
    changed: tuple[str, ...]
    """Which parts: `description`, `input schema`, `annotations`."""
    decision: str
    """How it is exposed after the change: `gated` or `passed`."""
    why: str
    held: bool
    """Whether the rules would pass it now but it stays gated, because it was first served gated."""
    gated_because: str = ""
    """When gated: the rule that gated it first (what a held tool is held by)."""
    at: datetime | None = None
    """When it was recorded, for a change read back from the store."""
    digests: Mapping[str, str] = field(default_factory=dict)
    """Its parts' digests after the change."""

    def line(self) -> str:
        """One line for the server log and `hitl upstreams`."""
        outcome = (
            "held gated: it was gated when first served, and an upstream cannot loosen its own gate"
            if self.held
            else self.decision
        )
        return (
            f"{self.exposed_name} changed its {', '.join(self.changed)} after hitl first served it; {outcome}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "tool": self.tool,
            "exposed_as": self.exposed_name,
            "changed": list(self.changed),
            "decision": self.decision,
            "why": self.why,
            "held": self.held,
            "gated_because": self.gated_because,
            **({"at": self.at.isoformat()} if self.at else {}),
            "digests": dict(self.digests),
        }


@dataclass
class _Seen:
    gated: bool
    why: str
    digests: dict[str, str]


class Baseline:
    """Per upstream tool: whether it was ever served gated, and its definition as last served."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], _Seen] = {}

    def remember(
        self, upstream: str, tool: str, *, gated: bool, why: str, tool_digests: Mapping[str, str]
    ) -> None:
        """Take `tool` as already served — gated (and so held) or not, with these digests — as an earlier
        process recorded it."""
        self._seen[(upstream, tool)] = _Seen(gated, why, dict(tool_digests))

    def review(
        self, upstream: str, listed: Iterable[tuple[Tool, Exposure]]
    ) -> tuple[list[Exposure], list[ToolChange]]:
        """Each tool's exposure with no loosening (a tool once gated stays gated), and what changed since
        each tool was last served. Remembers the listing: the next change is reported against it."""
        exposures: list[Exposure] = []
        changes: list[ToolChange] = []
        for tool, exposure in listed:
            now = digests(tool)
            seen = self._seen.get((upstream, tool.name))
            if seen is None:
                self._seen[(upstream, tool.name)] = _Seen(exposure.gated, exposure.why, now)
                exposures.append(exposure)
                continue
            held = seen.gated and not exposure.gated
            if held:
                exposure = replace(
                    exposure, decision="gated", why=f"held gated: gated when first served ({seen.why})"
                )
            elif exposure.gated and not seen.gated:
                seen.gated, seen.why = True, exposure.why  # tightened: from now on it is held
            changed = tuple(part for part in PARTS if seen.digests.get(part) != now[part])
            seen.digests = now
            if changed:
                changes.append(
                    ToolChange(
                        upstream=upstream,
                        tool=tool.name,
                        exposed_name=exposure.exposed_name,
                        changed=changed,
                        decision=exposure.decision,
                        why=exposure.why,
                        held=held,
                        digests=now,
                        gated_because=seen.why if seen.gated else "",
                    )
                )
            exposures.append(exposure)
        return exposures, changes

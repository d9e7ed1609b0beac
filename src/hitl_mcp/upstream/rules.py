"""Which of an upstream's tools are gated and which passed, and why, in words a person can check.

In order: a `gate` pattern that matches gates the tool (so gate wins where both match); else a `pass`
pattern passes it; else its annotations decide — `readOnlyHint = true` passes, anything else (another
hint, or none at all) gates it — unless the upstream's `trust_annotations` is false, which gates it
whatever they say. An upstream that says nothing about a tool therefore fails closed.

Patterns are shell globs matched case-sensitively against the upstream's own tool name (`fnmatchcase`),
as tool names are case-sensitive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from mcp.shared.tool_name_validation import validate_tool_name
from mcp_types import Tool

from hitl_mcp.upstream.settings import PreviewCall, UpstreamSettings

# Clients we know of cap a tool name at 64 characters (the protocol allows 128).
MAX_EXPOSED_NAME = 64
SEPARATOR = "__"

Decision = Literal["gated", "passed"]


@dataclass(frozen=True)
class Exposure:
    """How one upstream tool is offered to hitl's clients."""

    tool: str
    """Its name on the upstream."""
    exposed_name: str
    """Its name on hitl: `UPSTREAM__TOOL`."""
    decision: Decision
    why: str
    """The rule that decided, e.g. `gate pattern 'write_*'`."""

    @property
    def gated(self) -> bool:
        return self.decision == "gated"


@dataclass(frozen=True)
class Refusal:
    """An upstream tool hitl does not offer at all, and why."""

    tool: str
    reason: str


def exposed_name(upstream: str, tool: str) -> str:
    return f"{upstream}{SEPARATOR}{tool}"


def classify(tool: Tool, upstream: UpstreamSettings) -> Exposure | Refusal:
    """Gated or passed, and the rule or annotation that decided; a `Refusal` when the name hitl would
    give the tool is not a valid MCP tool name (or longer than clients accept)."""
    name = exposed_name(upstream.name, tool.name)
    validity = validate_tool_name(name)
    if not validity.is_valid:
        return Refusal(tool.name, f"{name!r} would not be a valid tool name: {'; '.join(validity.warnings)}")
    if len(name) > MAX_EXPOSED_NAME:
        return Refusal(tool.name, f"{name!r} would be longer than {MAX_EXPOSED_NAME} characters")
    for pattern in upstream.gate:
        if fnmatchcase(tool.name, pattern):
            return Exposure(tool.name, name, "gated", f"gate pattern {pattern!r}")
    for pattern in upstream.pass_:
        if fnmatchcase(tool.name, pattern):
            return Exposure(tool.name, name, "passed", f"pass pattern {pattern!r}")
    read_only = tool.annotations is not None and tool.annotations.read_only_hint is True
    if read_only and not upstream.trust_annotations:
        return Exposure(tool.name, name, "gated", "no pattern; its annotations are not trusted")
    if read_only:
        return Exposure(tool.name, name, "passed", "annotation readOnlyHint = true")
    return Exposure(tool.name, name, "gated", "no pattern and not marked read-only (fail closed)")


def preview_for(
    tool: str, upstream: UpstreamSettings, exposures: Iterable[Exposure]
) -> tuple[PreviewCall | None, str | None]:
    """The preview call configured for `tool` if it may be made, else why not. A preview runs without
    anyone's approval, so only a tool the rules pass (read-only) may serve one."""
    preview = upstream.previews.get(tool)
    if preview is None:
        return None, None
    decided = {exposure.tool: exposure for exposure in exposures}
    serving = decided.get(preview.tool)
    if serving is None:
        return None, f"the preview of {tool} calls {preview.tool}, which {upstream.name} does not offer"
    if serving.gated:
        return None, (
            f"the preview of {tool} calls {preview.tool}, which is gated ({serving.why}); a preview runs "
            "without approval, so it must be a tool that passes"
        )
    return preview, None

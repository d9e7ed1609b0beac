"""An upstream MCP server's tool as a gated action: validated against the upstream's own JSON Schema,
summarised in one line, previewed (with an optional read-only call made at filing), run once on a live
session to the upstream.

The gate knows it only through the `Action` interface the built-ins implement, so every rule of the
lifecycle — policy, quorum, expiry, the digest check, one claim, targets — holds for it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from jsonschema import exceptions as schema_errors
from jsonschema import validators
from mcp_types import CallToolResult, TextContent, Tool
from pydantic import RootModel

from hitl_mcp.actions.base import Action, ActionSettings, Execution
from hitl_mcp.errors import ActionFailed, InvalidArguments, OutcomeUnknown
from hitl_mcp.gateway.summary import call_summary
from hitl_mcp.upstream.delivery import NotSent
from hitl_mcp.upstream.settings import PreviewCall

# A preview call may take this long before its note says it did not answer; filing never waits longer.
PREVIEW_CALL_SECONDS = 10.0
PREVIEW_TEXT_LIMIT = 20_000


class UpstreamArguments(RootModel[dict[str, Any]]):
    """An upstream tool's arguments, as the caller sent them once they passed the upstream's schema."""


class UpstreamCalls(Protocol):
    """What an upstream tool needs of the sessions that reach its server."""

    def live(self, upstream: str, tool: str) -> bool:
        """Whether a live session to `upstream` offers `tool` now."""

    def connected(self, upstream: str) -> bool:
        """Whether there is a live session to `upstream` now, whatever it offers."""

    def passes(self, upstream: str, tool: str) -> bool:
        """Whether the rules forward `tool` at once (only such tools may serve preview calls)."""

    async def call(
        self, upstream: str, tool: str, arguments: dict[str, Any], *, timeout: float | None = None
    ) -> CallToolResult:
        """Call `tool` once. Raises `NotSent` when it certainly never reached the upstream; anything
        else raised (`LostAfterSend` among them) leaves its outcome unknown."""


class Offline:
    """No session at all: what a command that only reads an upstream's tool list (`hitl policy explain`)
    gives the tool. Nothing is live, and a call never leaves."""

    def live(self, upstream: str, tool: str) -> bool:
        return False

    def connected(self, upstream: str) -> bool:
        return False

    def passes(self, upstream: str, tool: str) -> bool:
        return False

    async def call(
        self, upstream: str, tool: str, arguments: dict[str, Any], *, timeout: float | None = None
    ) -> CallToolResult:
        raise NotSent(f"this command has no session to {upstream}; {tool} was not sent")


class UpstreamTool(Action[UpstreamArguments, ActionSettings]):
    """One gated tool of one upstream. `upstream_tool` builds a class per tool: the gate and the policy
    read `name` and `description` from the class, like the built-ins'."""

    upstream: ClassVar[str]
    tool: ClassVar[Tool]
    target_fields: ClassVar[dict[str, str]]
    preview_call: ClassVar[PreviewCall | None]
    arguments_model = UpstreamArguments
    settings_model = ActionSettings

    def __init__(self, calls: UpstreamCalls) -> None:
        super().__init__(ActionSettings())
        self.calls = calls
        self.validator = validators.validator_for(self.tool.input_schema)(self.tool.input_schema)

    @classmethod
    def argument_names(cls) -> frozenset[str]:
        return frozenset(cls.tool.input_schema.get("properties", {}))

    @classmethod
    def policy_names(cls) -> frozenset[str]:
        return cls.argument_names()

    def policy_values(self, args: UpstreamArguments, preview: Mapping[str, Any]) -> dict[str, object]:
        return dict(args.root)

    def target(self) -> dict[str, str]:
        return dict(self.target_fields)

    def ready(self) -> bool:
        # While its upstream is down an approved call waits for it; once the upstream is back, a tool it
        # no longer offers is claimed and fails, saying so, rather than wait until it expires.
        return self.calls.connected(self.upstream)

    def parse(self, raw: Mapping[str, Any]) -> UpstreamArguments:
        arguments = dict(raw)
        problems = sorted(self.validator.iter_errors(arguments), key=lambda error: list(error.absolute_path))
        if problems:
            raise InvalidArguments("; ".join(_describe(problem) for problem in problems[:5]))
        return UpstreamArguments(arguments)

    def summary(self, args: UpstreamArguments) -> str:
        return call_summary(self.name, args.root)

    async def preview(self, args: UpstreamArguments) -> dict[str, Any]:
        preview: dict[str, Any] = {
            "upstream": self.upstream,
            "tool": self.tool.name,
            "description": self.tool.description or "",
            "annotations": {}
            if self.tool.annotations is None
            else self.tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True),
            "arguments": args.root,
        }
        if self.preview_call is not None:
            preview["preview_call"] = await self._preview_call(self.preview_call, args.root)
        return preview

    async def _preview_call(self, call: PreviewCall, arguments: dict[str, Any]) -> dict[str, Any]:
        """What the configured read-only call answers now; a note instead when it cannot be made. Never
        refuses the filing: the approver reads the note."""
        filled = {name: fill(value, arguments) for name, value in call.arguments.items()}
        shown: dict[str, Any] = {"tool": call.tool, "arguments": filled}
        if not self.calls.passes(self.upstream, call.tool):
            shown["note"] = f"not made: {call.tool} is not a tool the rules forward at once (read-only)"
            return shown
        try:
            result = await self.calls.call(self.upstream, call.tool, filled, timeout=PREVIEW_CALL_SECONDS)
        except Exception as error:  # a preview is best effort; the approver is told why it is missing
            shown["note"] = f"the preview call failed: {type(error).__name__}: {error}"
            return shown
        shown.update(result_payload(result))
        if result.is_error:
            shown["note"] = "the preview call answered with an error"
        return shown

    async def execute(self, args: UpstreamArguments, execution: Execution) -> dict[str, Any]:
        if not self.calls.live(self.upstream, self.tool.name):
            # Claimed only while live, so the upstream went away, or no longer has the tool, since.
            raise ActionFailed(
                f"{self.upstream} does not offer {self.tool.name} now (down, or the tool is gone); not sent",
                effect="none",
            )
        try:
            result = await self.calls.call(self.upstream, self.tool.name, args.root)
        except NotSent as error:
            raise ActionFailed(
                f"{self.upstream} could not be reached: {error}; not sent", effect="none"
            ) from None
        except Exception as error:  # LostAfterSend, or anything unforeseen: it may have run
            raise OutcomeUnknown(
                f"the call was sent to {self.upstream}, which was then lost "
                f"({type(error).__name__}: {error}); "
                "whether it took effect is unknown. It is never sent again by itself: check, then record "
                "what happened with `hitl settle`"
            ) from None
        payload = result_payload(result)
        if result.is_error:
            text = _text_of(result) or "(no text)"
            raise ActionFailed(f"{self.upstream} answered with an error: {text}", result=payload)
        return payload


def upstream_tool(
    upstream: str,
    tool: Tool,
    *,
    target: Mapping[str, str],
    preview_call: PreviewCall | None = None,
) -> type[UpstreamTool]:
    """The action class of one gated tool, named `UPSTREAM__TOOL`."""
    name = f"{upstream}__{tool.name}"
    attributes = {
        "name": name,
        "description": gated_description(upstream, tool),
        "upstream": upstream,
        "tool": tool,
        "target_fields": dict(target),
        "preview_call": preview_call,
    }
    return type(f"UpstreamTool_{name}", (UpstreamTool,), attributes)


def gated_description(upstream: str, tool: Tool) -> str:
    """The upstream's description, after one line saying what calling the gated tool does."""
    return (
        "Files a request for human approval and returns its id at once: calling this tool runs nothing "
        f"until a person approves it. Then {upstream}'s {tool.name} runs once with the approved "
        f"arguments.\n\n{tool.description or ''}"
    ).rstrip()


def fill(template: Any, arguments: Mapping[str, Any]) -> Any:
    """A preview call's argument from the call's own: `"{path}"` is the whole value of `path`; other text
    has each `{name}` replaced by that argument as text; anything else is taken as it is."""
    if not isinstance(template, str):
        return template
    stripped = template.strip()
    if stripped.startswith("{") and stripped.endswith("}") and stripped[1:-1] in arguments:
        return arguments[stripped[1:-1]]
    filled = template
    for name, value in arguments.items():
        text = value if isinstance(value, str) else json.dumps(value)
        filled = filled.replace("{" + name + "}", text)
    return filled


def result_payload(result: CallToolResult) -> dict[str, Any]:
    """An upstream's answer as a request keeps it: its content blocks and structured content."""
    content = [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]
    payload: dict[str, Any] = {"content": content, "is_error": bool(result.is_error)}
    if result.structured_content is not None:
        payload["structured_content"] = result.structured_content
    size = len(json.dumps(payload))
    if size > PREVIEW_TEXT_LIMIT * 10:
        payload = {"content": [{"type": "text", "text": (_text_of(result) or "")[:PREVIEW_TEXT_LIMIT]}]}
        payload["note"] = f"the answer was {size:,} bytes; its first text is kept"
    return payload


def _text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def _describe(error: schema_errors.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path) or "(arguments)"
    rule = error.validator if isinstance(error.validator, str) else "schema"
    return f"{path}: {error.message} ({rule})"

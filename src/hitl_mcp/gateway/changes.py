"""Tool changes on the record: each one a `tool-changed` audit record on its upstream's own trail.

The trail id is `upstream.NAME` rather than a request id, so one indexed read (`Store.audit_trail`) finds
every change of an upstream's tools: `hitl upstreams` shows them, and a server starting again seeds its
baseline from them, so that a tool held gated stays held across a restart. Only records made under the
upstream's current rules (`UpstreamSettings.rules_digest`) count: a restart with changed rules — a new
`pass` pattern, say — is the operator accepting what the tools are now.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hitl_mcp.errors import HitlError
from hitl_mcp.gate import Gate
from hitl_mcp.models import AuditEvent
from hitl_mcp.upstream.baseline import Baseline, ToolChange
from hitl_mcp.upstream.settings import UpstreamSettings

if TYPE_CHECKING:
    from hitl_mcp.store import Store

logger = logging.getLogger(__name__)

EVENT = "tool-changed"


def trail_id(upstream: str) -> str:
    return f"upstream.{upstream}"


async def record(gate: Gate, change: ToolChange, settings: UpstreamSettings) -> None:
    """One audit record for `change` (with the rules it was judged under); a store that cannot take it is
    logged, not raised: the tool is held gated either way, and the server log has the change."""
    details: dict[str, Any] = {**change.as_json(), "rules": settings.rules_digest()}
    try:
        await gate.store.record_event(
            trail_id(change.upstream), EVENT, trail_id(change.upstream), details, gate.clock()
        )
    except HitlError:
        logger.exception("the change of %s could not be recorded", change.exposed_name)


async def recorded(store: Store, upstream: str) -> list[AuditEvent]:
    """The changes recorded for `upstream`'s tools, oldest first."""
    return [event for event in await store.audit_trail(trail_id(upstream)) if event.event == EVENT]


async def standing(store: Store, settings: UpstreamSettings) -> tuple[ToolChange, ...]:
    """The latest recorded change of each of `settings`' tools made under its current rules: those a
    restart has not accepted, for `hitl upstreams` to show."""
    rules = settings.rules_digest()
    latest: dict[str, ToolChange] = {}
    for event in await recorded(store, settings.name):
        details = event.details
        digests = details.get("digests")
        if details.get("rules") != rules or not isinstance(details.get("tool"), str):
            continue
        if not isinstance(digests, dict):
            continue
        changed = details.get("changed")
        latest[details["tool"]] = ToolChange(
            upstream=settings.name,
            tool=details["tool"],
            exposed_name=str(details.get("exposed_as", "")),
            changed=tuple(str(part) for part in changed) if isinstance(changed, list) else (),
            decision=str(details.get("decision", "")),
            why=str(details.get("why", "")),
            held=details.get("held") is True,
            gated_because=str(details.get("gated_because", "")),
            digests={str(part): str(value) for part, value in digests.items()},
            at=event.at,
        )
    return tuple(latest.values())


async def restore(store: Store, baseline: Baseline, upstreams: Iterable[UpstreamSettings]) -> None:
    """Seed `baseline` with what earlier processes recorded under each upstream's current rules."""
    for settings in upstreams:
        for change in await standing(store, settings):
            baseline.remember(
                settings.name,
                change.tool,
                gated=change.decision == "gated",
                why=change.gated_because or change.why,
                tool_digests=change.digests,
            )

"""`hitl upstreams`: each configured upstream MCP server, whether it starts, how hitl exposes its tools."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import anyio
import click

from hitl_mcp import display
from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals
from hitl_mcp.config import Settings, with_upstreams
from hitl_mcp.errors import HitlError
from hitl_mcp.upstream.baseline import Baseline, ToolChange
from hitl_mcp.upstream.desktop import load_mcp_servers
from hitl_mcp.upstream.settings import UpstreamSettings
from hitl_mcp.upstream.state import Status, UpstreamState

DESCRIPTION_COLUMNS = 60


@main.command("upstreams")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per upstream.")
@click.option(
    "--upstreams",
    "upstreams_file",
    type=click.Path(path_type=Path),
    help="Also the servers of a desktop client's MCP configuration (its mcpServers JSON), as with "
    "`hitl serve --upstreams FILE`.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    help="Seconds each upstream has to start and list its tools [default: its start_timeout_seconds].",
)
@refusals
def upstreams(as_json: bool, upstreams_file: Path | None, timeout: float | None) -> None:
    """Start (or reach) each upstream once, list its tools, and close it again: its state (ready, or
    failed and why) and, for each tool, whether hitl gates it or passes it at once, by which rule or
    annotation, and the name it has on hitl (UPSTREAM__TOOL).

    Exits 1 when an upstream is not ready, 2 (with the key) when the configuration is wrong."""
    settings = load()
    if upstreams_file is not None:
        settings = with_upstreams(settings, load_mcp_servers(upstreams_file))
    configured = list(settings.upstreams.values())
    states = anyio.run(_probe_all, settings, configured, timeout)
    if as_json:
        click.echo(json.dumps([state.as_json() for state in states], indent=2, ensure_ascii=False))
    elif not states:
        click.echo("No upstreams are configured ([upstreams.NAME] in the config file, or --upstreams FILE).")
    else:
        click.echo(render(states))
    if any(state.status is not Status.READY for state in states):
        sys.exit(1)


async def _probe_all(
    settings: Settings, configured: Sequence[UpstreamSettings], timeout: float | None
) -> list[UpstreamState]:
    from hitl_mcp.upstream.supervisor import probe  # the SDK's client: imported only when needed

    states: list[UpstreamState | None] = [None] * len(configured)
    changes, baseline = await _recorded_changes(settings, configured)

    async def one(index: int, upstream: UpstreamSettings) -> None:
        # An upstream's stderr would bury the table; the reason of a failure carries its last line.
        states[index] = await probe(upstream, timeout, log=lambda line: None, baseline=baseline)

    async with anyio.create_task_group() as tasks:
        for index, upstream in enumerate(configured):
            tasks.start_soon(one, index, upstream)
    return [replace(state, changes=changes[state.name]) for state in states if state is not None]


async def _recorded_changes(
    settings: Settings, configured: Sequence[UpstreamSettings]
) -> tuple[dict[str, tuple[ToolChange, ...]], Baseline]:
    """What servers recorded of each upstream's tools changing while they served them, and the baseline
    a server started now would hold them to; none without a store to read (one no server has used)."""
    from hitl_mcp.gateway.changes import restore, standing
    from hitl_mcp.store import open_store

    found: dict[str, tuple[ToolChange, ...]] = {upstream.name: () for upstream in configured}
    baseline = Baseline()
    try:
        store = await open_store(settings, readonly=True)
    except HitlError:
        return found, baseline
    try:
        for upstream in configured:
            found[upstream.name] = await standing(store, upstream)
        await restore(store, baseline, configured)
    except HitlError:
        pass  # the table is still worth printing without them
    finally:
        await store.close()
    return found, baseline


def render(states: Sequence[UpstreamState]) -> str:
    """A table of the upstreams, then one of the tools of each ready one. Upstream-written text (names,
    descriptions, reasons) is escaped, cut and padded by `display`."""
    columns = shutil.get_terminal_size((120, 24)).columns
    rows = [(state.name, state.kind, state.status.value, _detail(state), _where(state)) for state in states]
    parts = [
        display.table(("UPSTREAM", "KIND", "STATUS", "DETAIL", "TARGET"), rows, columns=columns, keep={3})
    ]
    for state in states:
        if state.status is not Status.READY:
            continue
        heading = f"{state.name}: {state.server}" if state.server else state.name
        lines = [display.visible(heading)]
        tool_rows = [
            (
                listed.exposure.exposed_name,
                listed.exposure.decision,
                listed.exposure.why + (f"; preview: {listed.preview.tool}" if listed.preview else ""),
                display.cut(listed.tool.description or "", DESCRIPTION_COLUMNS),
            )
            for listed in state.tools
        ]
        if tool_rows:
            table = display.table(
                ("EXPOSED AS", "DECISION", "WHY", "DESCRIPTION"), tool_rows, columns=columns - 2, keep={0, 2}
            )
            lines.extend("  " + line for line in table.splitlines())
        else:
            lines.append("  (no tools)")
        lines.extend(
            f"  refused {display.visible(r.tool)}: {display.visible(r.reason)}" for r in state.refused
        )
        lines.extend(f"  warning: {display.visible(warning)}" for warning in state.warnings)
        lines.extend(f"  changed: {display.visible(_changed(change))}" for change in state.changes)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _changed(change: ToolChange) -> str:
    when = f" (recorded {change.at:%Y-%m-%d %H:%M} UTC)" if change.at else ""
    return change.line() + when


def _detail(state: UpstreamState) -> str:
    if state.status is Status.READY:
        gated = sum(listed.exposure.gated for listed in state.tools)
        count = len(state.tools)
        return f"{count} tool{'s' if count != 1 else ''}: {gated} gated, {count - gated} passed"
    return state.reason or ""


def _where(state: UpstreamState) -> str:
    return state.target.get("command") or state.target.get("url") or ""

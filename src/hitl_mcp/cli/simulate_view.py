"""`hitl policy simulate` for a person: per tool, the outcomes now and under the other policy, and a few
calls whose outcome would change. Agent-written text (summaries, names) is shown escaped, never obeyed."""

from __future__ import annotations

from pathlib import Path

from hitl_mcp.display import visible
from hitl_mcp.models import utc
from hitl_mcp.simulate import Simulation


def render(figures: Simulation, file: Path) -> str:
    window = f" filed since {utc(figures.since).isoformat(timespec='seconds')}" if figures.since else ""
    if not figures.calls:
        return f"No calls{window} to replay."
    lines = [
        f"Replayed {figures.calls:,} call{'s' if figures.calls != 1 else ''}{window} against "
        f"{visible(str(file))}: {figures.changed:,} would have had another outcome."
    ]
    for tool, tally in sorted(figures.tools.items()):
        lines.append("")
        lines.append(f"{visible(tool)}: {tally.calls:,} calls, {tally.changed:,} changed")
        outcomes = [*tally.now, *(name for name in tally.would if name not in tally.now)]
        width = max(len(name) for name in outcomes)
        lines.append(f"  {'outcome':<{width}}  {'now':>8}  {'would':>8}")
        for name in outcomes:
            lines.append(f"  {visible(name):<{width}}  {tally.now[name]:>8,}  {tally.would[name]:>8,}")
        for (before, after), count in tally.counts.most_common():
            lines.append(f"  {count:,} × {visible(before)} → {visible(after)}, e.g.")
            for filed in tally.changes[(before, after)]:
                lines.append(
                    f"    {filed.request_id} ({visible(filed.requested_by)}): {visible(filed.summary)}"
                )
    return "\n".join(lines)
